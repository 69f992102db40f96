{{/*
The four services, in the order the templates render them.
*/}}
{{- define "keymesh.serviceNames" -}}
key-service crypto-service token-service audit-service
{{- end -}}

{{/*
What each binary needs and who calls it. These are facts about the code, not settings, so they are not in
values.yaml.
  database:    reads KEYMESH_DATABASE__URL
  masterKey:   opens the local KMS (KEYMESH_MASTER_KEY and local-kms.json)
  meshCallers: mesh services that call it (for NetworkPolicy)
    key-service    <- crypto-service (GetDataKey)
    token-service  <- key-service, crypto-service, audit-service (JWKS for token verification)
    audit-service  <- key-service, crypto-service, token-service (Append)
*/}}
{{- define "keymesh.topology" -}}
key-service:
  database: true
  masterKey: true
  meshCallers:
    - crypto-service
crypto-service:
  database: false
  masterKey: false
  meshCallers: []
token-service:
  database: true
  masterKey: true
  meshCallers:
    - key-service
    - crypto-service
    - audit-service
audit-service:
  database: true
  masterKey: true
  meshCallers:
    - key-service
    - crypto-service
    - token-service
{{- end -}}

{{- define "keymesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every resource name: fullnameOverride, else the release name. It is cut to 43 characters, so that
"<prefix>-crypto-service-tls" still fits in 63.
*/}}
{{- define "keymesh.prefix" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 43 | trimSuffix "-" -}}
{{- end -}}

{{- define "keymesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Name of a service's Deployment, Service, PDB, NetworkPolicy and Certificate. Called as
include "keymesh.serviceName" (dict "root" $ "svc" "key-service").
*/}}
{{- define "keymesh.serviceName" -}}
{{- printf "%s-%s" (include "keymesh.prefix" .root) .svc -}}
{{- end -}}

{{/*
host:port at which the other services reach a service (its Service's short DNS name).
*/}}
{{- define "keymesh.endpoint" -}}
{{- $cfg := index .root.Values.services .svc -}}
{{- printf "%s:%d" (include "keymesh.serviceName" .) (int $cfg.port) -}}
{{- end -}}

{{/*
Selector labels of one service: (dict "root" $ "svc" "key-service").
*/}}
{{- define "keymesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keymesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/*
All labels of one service: (dict "root" $ "svc" "key-service").
*/}}
{{- define "keymesh.labels" -}}
helm.sh/chart: {{ include "keymesh.chart" .root }}
{{ include "keymesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | toString | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: keymesh
{{- end -}}

{{- define "keymesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Name of the Secret with ca.crt, tls.crt and tls.key for one service: (dict "root" $ "svc" "key-service").
*/}}
{{- define "keymesh.tlsSecretName" -}}
{{- $explicit := "" -}}
{{- if eq .root.Values.tls.mode "secrets" -}}
{{- $explicit = index (.root.Values.tls.secrets | default dict) .svc | default "" -}}
{{- end -}}
{{- $explicit | default (printf "%s-tls" (include "keymesh.serviceName" .)) -}}
{{- end -}}

{{/*
Database Secret name and key of one service as "name/key", or "" when none is configured.
*/}}
{{- define "keymesh.databaseSecret" -}}
{{- $cfg := index .root.Values.services .svc -}}
{{- $name := dig "database" "existingSecret" "" $cfg | default .root.Values.database.existingSecret -}}
{{- $key := dig "database" "secretKey" "" $cfg | default .root.Values.database.secretKey | default "url" -}}
{{- if $name -}}
{{- printf "%s/%s" $name $key -}}
{{- end -}}
{{- end -}}

{{/*
Fails the render on settings that cannot work. Renders nothing.
*/}}
{{- define "keymesh.validate" -}}
{{- $root := . -}}
{{- range $svc := splitList " " (include "keymesh.serviceNames" $root) -}}
{{- $cfg := index $root.Values.services $svc -}}
{{- if not $cfg -}}
{{- fail (printf "services.%s is missing: the chart always deploys all four services" $svc) -}}
{{- end -}}
{{- if not $cfg.port -}}
{{- fail (printf "services.%s.port is required" $svc) -}}
{{- end -}}
{{- end -}}
{{- $audit := index $root.Values.services "audit-service" -}}
{{- if and (gt (int $audit.replicas) 1) (not (include "keymesh.databaseSecret" (dict "root" $root "svc" "audit-service"))) -}}
{{- fail "services.audit-service.replicas above 1 need a shared Postgres (database.existingSecret or services.audit-service.database.existingSecret): replicas take turns appending to one chain under its lock" -}}
{{- end -}}
{{- if not (has $root.Values.tls.mode (list "cert-manager" "secrets")) -}}
{{- fail (printf "tls.mode must be \"cert-manager\" or \"secrets\", not %q" (toString $root.Values.tls.mode)) -}}
{{- end -}}
{{- if and (eq $root.Values.tls.mode "cert-manager") (not $root.Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.issuerRef.name is required when tls.mode is cert-manager" -}}
{{- end -}}
{{- $needed := add (int $root.Values.preStopSleepSeconds) (int $root.Values.shutdownGraceSeconds) -}}
{{- if ge $needed (int $root.Values.terminationGracePeriodSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + shutdownGraceSeconds (%d)" (int $root.Values.terminationGracePeriodSeconds) $needed) -}}
{{- end -}}
{{- if not $root.Values.allowEphemeralState -}}
{{- if not $root.Values.masterKey.existingSecret -}}
{{- fail "masterKey.existingSecret is required (key-service and token-service need the master key and local-kms.json); set allowEphemeralState=true only to try the chart out" -}}
{{- end -}}
{{- $topology := fromYaml (include "keymesh.topology" $root) -}}
{{- range $svc := splitList " " (include "keymesh.serviceNames" $root) -}}
{{- if (index $topology $svc).database -}}
{{- if not (include "keymesh.databaseSecret" (dict "root" $root "svc" $svc)) -}}
{{- fail (printf "database.existingSecret (or services.%s.database.existingSecret) is required; set allowEphemeralState=true only to try the chart out" $svc) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
