{{/*
Each service's NATS credentials (nats.auth, docs/deploy.md "NATS credentials"): an nkey seed
in a Secret of its own, mounted into that service's pods only.
*/}}

{{/* Where a pod finds its seed: PHONESELLER_NATS_NKEY_FILE. */}}
{{- define "phoneseller.natsCredentialsDir" -}}/var/run/secrets/phoneseller/nats{{- end -}}

{{- define "phoneseller.natsNkeyFile" -}}
{{- if .Values.nats.auth.enabled -}}
{{- printf "%s/nkey" (include "phoneseller.natsCredentialsDir" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret with one service's seed: yours (existingSecrets), or <fullname>-<service>-nats. */}}
{{- define "phoneseller.natsSecretName" -}}
{{- $existing := index .root.Values.nats.auth.existingSecrets .service | default "" -}}
{{- $existing | default (printf "%s-nats" (include "phoneseller.serviceName" .)) -}}
{{- end -}}

{{/*
Refuses what values.schema.json cannot see: a seed or Secret for a service that does not exist
(a typo would leave the real service without credentials), and both for one service.
*/}}
{{- define "phoneseller.validateNatsAuth" -}}
{{- $auth := .Values.nats.auth -}}
{{- range $field := list "existingSecrets" "seeds" -}}
{{- range $service, $_ := index $auth $field -}}
{{- if not (hasKey $.Values.services $service) -}}
{{- fail (printf "nats.auth.%s.%s: there is no service %q" $field $service $service) -}}
{{- end -}}
{{- if and (index $auth.existingSecrets $service) (index $auth.seeds $service) -}}
{{- fail (printf "nats.auth: give services.%s either a seed or an existing Secret, not both" $service) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
