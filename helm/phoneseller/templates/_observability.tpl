{{/* "true" when a labels map has every key/value of a selector. Call with (dict "labels" …
"selector" …): NOTES.txt finds the ingress gateway's Service with it (lookup has no selector). */}}
{{- define "phoneseller.matchesLabels" -}}
{{- $ok := true -}}
{{- $labels := .labels | default dict -}}
{{- range $key, $value := .selector -}}
{{- if ne (toString (index $labels $key | default "")) (toString $value) -}}
{{- $ok = false -}}
{{- end -}}
{{- end -}}
{{- $ok -}}
{{- end -}}
