{{/*
Names, labels and small shared pieces of the phoneseller chart.
*/}}

{{/* The gRPC port every pod listens on and every Service exposes (docs/configuration.md). */}}
{{- define "phoneseller.grpcPort" -}}50051{{- end -}}

{{- define "phoneseller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: the release name, plus the chart name unless the release
name already contains it. Truncated so that "<fullname>-<service>-database" stays a valid name.
*/}}
{{- define "phoneseller.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "phoneseller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The image tag: image.tag, or the chart's appVersion. */}}
{{- define "phoneseller.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{/* The image reference: repository@digest when image.digest pins it, else repository:tag. */}}
{{- define "phoneseller.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "phoneseller.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/* Labels of every resource of the release; "component" says what part it is. */}}
{{- define "phoneseller.labels" -}}
{{- $root := .root -}}
helm.sh/chart: {{ include "phoneseller.chart" $root }}
app.kubernetes.io/name: {{ .name | default (include "phoneseller.name" $root) }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: {{ include "phoneseller.name" $root }}
app.kubernetes.io/version: {{ include "phoneseller.imageTag" $root | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end -}}

{{/* Selector labels of one service's pods. Call with (dict "root" $ "service" "order"). */}}
{{- define "phoneseller.selectorLabels" -}}
app.kubernetes.io/name: {{ .service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Labels of one service's objects: the common ones plus Kiali's app and version. */}}
{{- define "phoneseller.serviceLabels" -}}
{{ include "phoneseller.labels" (dict "root" .root "name" .service "component" "microservice") }}
app: {{ .service }}
version: {{ include "phoneseller.imageTag" .root | trunc 63 | quote }}
{{- end -}}

{{/* Selects every pod of the release that runs a phoneseller service. */}}
{{- define "phoneseller.releaseSelector" -}}
app.kubernetes.io/part-of: {{ include "phoneseller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Kubernetes name (Deployment, Service, ServiceAccount) of one service. */}}
{{- define "phoneseller.serviceName" -}}
{{- printf "%s-%s" (include "phoneseller.fullname" .root) .service -}}
{{- end -}}

{{/* The cluster-wide DNS name of one service's Service. */}}
{{- define "phoneseller.host" -}}
{{- printf "%s.%s.svc.%s" (include "phoneseller.serviceName" .) .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* host:port where other pods call one service. */}}
{{- define "phoneseller.address" -}}
{{- printf "%s:%s" (include "phoneseller.host" .) (include "phoneseller.grpcPort" .root) -}}
{{- end -}}

{{/* The SPIFFE principal of a service account: (dict "root" $ "namespace" "ns" "account" "sa"). */}}
{{- define "phoneseller.principal" -}}
{{- printf "%s/ns/%s/sa/%s" .root.Values.istio.trustDomain .namespace .account -}}
{{- end -}}

{{/* The name of the Secret and key that hold one service's PHONESELLER_DATABASE_URL. */}}
{{- define "phoneseller.databaseSecretName" -}}
{{- $db := (index .root.Values.services .service).database -}}
{{- if and (eq $db.engine "postgresql") $db.existingSecret -}}
{{- $db.existingSecret -}}
{{- else -}}
{{- printf "%s-database" (include "phoneseller.serviceName" .) -}}
{{- end -}}
{{- end -}}

{{- define "phoneseller.databaseSecretKey" -}}
{{- $db := (index .root.Values.services .service).database -}}
{{- if and (eq $db.engine "postgresql") $db.existingSecret -}}
{{- $db.existingSecretKey -}}
{{- else -}}
PHONESELLER_DATABASE_URL
{{- end -}}
{{- end -}}

{{/*
Checks the combinations values.schema.json also rejects, so that `--skip-schema-validation`
cannot install a broken release: a SQLite file on a ReadWriteOnce volume has one writer.
*/}}
{{- define "phoneseller.validateService" -}}
{{- $svc := index .root.Values.services .service -}}
{{- if eq $svc.database.engine "sqlite" -}}
{{- if gt (int $svc.replicas) 1 -}}
{{- fail (printf "services.%s: replicas %d needs database.engine postgresql; a SQLite file on a ReadWriteOnce volume has exactly one writer" .service (int $svc.replicas)) -}}
{{- end -}}
{{- if $svc.autoscaling.enabled -}}
{{- fail (printf "services.%s: autoscaling needs database.engine postgresql; a SQLite file on a ReadWriteOnce volume has exactly one writer" .service) -}}
{{- end -}}
{{- else if not (or $svc.database.url $svc.database.existingSecret) -}}
{{- fail (printf "services.%s: database.engine postgresql needs database.url or database.existingSecret" .service) -}}
{{- end -}}
{{- end -}}

{{/*
Renders one Istio HTTPRoute of the mesh policy. Call with
(dict "root" $ "service" "payment" "route" <a mesh route> "fault" <the destination's fault>
      "match" <list of gRPC paths, empty for a catch-all route>).
*/}}
{{- define "phoneseller.httpRoute" -}}
- name: {{ .name | default .route.name }}
  {{- with .match }}
  match:
    {{- range . }}
    - uri:
        exact: {{ . }}
    {{- end }}
  {{- end }}
  route:
    - destination:
        host: {{ include "phoneseller.host" . }}
        port:
          number: {{ include "phoneseller.grpcPort" .root }}
        {{- with .route.subset }}
        subset: {{ . }}
        {{- end }}
  {{- with .route.timeout }}
  timeout: {{ . }}
  {{- end }}
  {{- with .route.retries }}
  retries:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .fault }}
  fault:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
Checks what values.schema.json cannot: every route's subset exists in the destination's subsets
(Istio answers a route to a missing subset with 503), and every subset is named by a route (a
subset's policy applies only to traffic a route sends to it, so an unnamed one is a forgotten
`subset:`). mesh/policy.py rejects the same. Call with (dict "service" "promotion" "destination"
<mesh destination>).
*/}}
{{- define "phoneseller.validateSubsets" -}}
{{- $subsets := .destination.subsets | default dict -}}
{{- $routed := dict -}}
{{- range .destination.routes -}}
{{- with .subset -}}
{{- if not (hasKey $subsets .) -}}
{{- fail (printf "mesh.destinations.%s.routes: no subset %q in mesh.destinations.%s.subsets" $.service . $.service) -}}
{{- end -}}
{{- $_ := set $routed . true -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := $subsets -}}
{{- if not (hasKey $routed $name) -}}
{{- fail (printf "mesh.destinations.%s.subsets.%s: no route sends to it, so its trafficPolicy would apply to nothing" $.service $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The mesh route of a destination that serves one method: the first route listing the method,
else the catch-all route. Returns the route as JSON. Call with (dict "destination" <mesh
destination> "method" "PlaceOrder").
*/}}
{{- define "phoneseller.routeFor" -}}
{{- $found := dict -}}
{{- range .destination.routes -}}
{{- if and (not $found) (has $.method (.methods | default list)) -}}
{{- $found = . -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- range .destination.routes -}}
{{- if and (not $found) (not .methods) -}}
{{- $found = . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/*
The descriptor set the transcoder reads. files/descriptors.binpb is a symbolic link to
gen/descriptors.binpb (made by `make protos`); `helm package` stores the file itself.
*/}}
{{- define "phoneseller.descriptorSet" -}}
{{- $data := .Files.Get "files/descriptors.binpb" -}}
{{- if not $data -}}
{{- fail "istio.jsonTranscoding.enabled needs files/descriptors.binpb (a link to gen/descriptors.binpb, made by `make protos`), or set istio.jsonTranscoding.enabled=false" -}}
{{- end -}}
{{- $data -}}
{{- end -}}

{{/* Pod labels that ask Istio for a sidecar. */}}
{{- define "phoneseller.injectionLabels" -}}
{{- if .Values.istio.enabled -}}
{{- if .Values.istio.revision -}}
istio.io/rev: {{ .Values.istio.revision }}
{{- else -}}
sidecar.istio.io/inject: "true"
{{- end -}}
{{- end -}}
{{- end -}}

{{- /*
The header the ingress gateway passes the verified token's payload in; the services read it
(services/kit/identity.py CLAIMS_HEADER; tests/helm/test_chart_end_users.py checks both agree).
*/ -}}
{{- define "phoneseller.claimsHeader" -}}x-phoneseller-claims{{- end -}}
