{{/*
Pieces of the NetworkPolicies (networkpolicy.yaml).
*/}}

{{/* Labels of the `helm test` pod (phoneseller.labels with component "test"). */}}
{{- define "phoneseller.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end -}}

{{/* An egress rule to the cluster's DNS (networkPolicies.dns). */}}
{{- define "phoneseller.dnsEgress" -}}
# DNS.
- to:
    {{- toYaml .Values.networkPolicies.dns.to | nindent 4 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{/* With Istio, an egress rule to istiod: the sidecar's configuration and certificates. */}}
{{- define "phoneseller.istiodEgress" -}}
{{- if .Values.istio.enabled -}}
{{- $cp := .Values.networkPolicies.controlPlane -}}
# istiod: the sidecar's configuration and certificates.
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ $cp.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml $cp.istiodSelector | nindent 10 }}
  ports:
    {{- range $cp.istiodPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end -}}
{{- end -}}
