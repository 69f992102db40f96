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
  kms:         opens the KMS keyring ([kms]; with a local backend, KEYMESH_MASTER_KEY and local-kms.json)
  meshCallers: mesh services that call it (for NetworkPolicy)
    key-service    <- crypto-service (GetDataKey)
    token-service  <- key-service, crypto-service, audit-service (JWKS for token verification)
    audit-service  <- key-service, crypto-service, token-service (Append)
*/}}
{{- define "keymesh.topology" -}}
key-service:
  database: true
  kms: true
  meshCallers:
    - crypto-service
crypto-service:
  database: false
  kms: false
  meshCallers: []
token-service:
  database: true
  kms: true
  meshCallers:
    - key-service
    - crypto-service
    - audit-service
audit-service:
  database: true
  kms: true
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
Whether the KMS keyring has a local member (the implicit "local" one, or a backend of type local): "true" or "".
Only then do the services need the master key and local-kms.json.
*/}}
{{- define "keymesh.localKmsInUse" -}}
{{- $kms := .Values.kms | default dict -}}
{{- $backends := $kms.backends | default dict -}}
{{- $names := concat (list ($kms.primary | default "local")) ($kms.secondary | default list) ($kms.retired | default list) -}}
{{- range $tenant := values ($kms.tenants | default dict) -}}
{{- $names = concat $names (list $tenant.primary) ($tenant.secondary | default list) ($tenant.retired | default list) -}}
{{- end -}}
{{- $local := false -}}
{{- range $name := $names -}}
{{- if hasKey $backends $name -}}
{{- if eq (toString (index $backends $name).type) "local" -}}{{- $local = true -}}{{- end -}}
{{- else if eq $name "local" -}}
{{- $local = true -}}
{{- end -}}
{{- end -}}
{{- if $local -}}true{{- end -}}
{{- end -}}

{{/*
Where the chart mounts what the KMS backends read from files.
*/}}
{{- define "keymesh.vaultTokenPath" -}}/var/run/secrets/keymesh/vault/token{{- end -}}
{{- define "keymesh.vaultCaPath" -}}/etc/keymesh/kms/vault-ca.crt{{- end -}}
{{- define "keymesh.gcpCredentialsPath" -}}/etc/keymesh/kms/gcp-credentials.json{{- end -}}

{{/*
[kms] as the services read it, as YAML: kms.primary/secondary/retired/backends/tenants, with the file paths the
chart mounts filled in where a backend leaves them out (a Vault backend's ca_cert when kms.credentials.vault.caCert
is set, and the jwt_file of Kubernetes login: the projected token the chart mounts for Vault's audience).
*/}}
{{- define "keymesh.kmsConfig" -}}
{{- $kms := .Values.kms | default dict -}}
{{- $vault := dig "credentials" "vault" dict $kms -}}
{{- $out := dict "primary" ($kms.primary | default "local") -}}
{{- with $kms.secondary }}{{- $_ := set $out "secondary" . -}}{{- end -}}
{{- with $kms.retired }}{{- $_ := set $out "retired" . -}}{{- end -}}
{{- $backends := dict -}}
{{- range $name, $backend := ($kms.backends | default dict) -}}
{{- $b := deepCopy $backend -}}
{{- if eq (toString $b.type) "vault" -}}
{{- if and (dig "caCert" "existingSecret" "" $vault) (not (hasKey $b "ca_cert")) -}}
{{- $_ := set $b "ca_cert" (include "keymesh.vaultCaPath" $) -}}
{{- end -}}
{{- if and $b.auth (eq (toString $b.auth.method) "kubernetes") (not (hasKey $b.auth "jwt_file")) -}}
{{- $_ := set $b.auth "jwt_file" (include "keymesh.vaultTokenPath" $) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $backends $name $b -}}
{{- end -}}
{{- with $backends }}{{- $_ := set $out "backends" . -}}{{- end -}}
{{- with $kms.tenants }}{{- $_ := set $out "tenants" . -}}{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Whether a Vault backend logs in with Kubernetes auth (the pods then get a projected service-account token).
*/}}
{{- define "keymesh.vaultKubernetesAuth" -}}
{{- range $name, $backend := (.Values.kms.backends | default dict) -}}
{{- if and (eq (toString $backend.type) "vault") $backend.auth (eq (toString $backend.auth.method) "kubernetes") -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A TOML table from a map: (dict "path" "kms" "table" $map). Scalars and arrays first, then sub-tables, keys
sorted. Helm reads YAML numbers as floats: whole ones are written as integers, which is what the services'
integer fields (milliseconds, counts) need. Keys are quoted, so any backend name is a valid key.
*/}}
{{- define "keymesh.tomlTable" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- printf "[%s]\n" $path -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $value := index $table $key -}}
{{- if not (kindIs "map" $value) -}}
{{- printf "%s = %s\n" (toJson $key) (include "keymesh.tomlValue" $value) -}}
{{- end -}}
{{- end -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $value := index $table $key -}}
{{- if kindIs "map" $value -}}
{{- include "keymesh.tomlTable" (dict "path" (printf "%s.%s" $path (toJson $key)) "table" $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "keymesh.tomlValue" -}}
{{- if kindIs "slice" . -}}
[{{- range $i, $item := . -}}{{- if $i -}}, {{ end -}}{{- include "keymesh.tomlValue" $item -}}{{- end -}}]
{{- else if kindIs "map" . -}}
{{- /* A map inside an array (e.g. [[tokens.exchange.issuers]]): an inline table. */ -}}
{ {{- range $i, $key := keys . | sortAlpha -}}{{- if $i -}}, {{ end -}}{{ toJson $key }} = {{ include "keymesh.tomlValue" (index $ $key) }}{{- end -}} }
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- /* Whole numbers as integers while exact (|n| < 2^53, where a float still holds every integer). */ -}}
{{- if and (eq (float64 .) (floor .)) (lt (float64 .) 9007199254740992.0) (gt (float64 .) -9007199254740992.0) -}}{{- printf "%d" (int64 .) -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "bool" .) -}}
{{- . -}}
{{- else if kindIs "invalid" . -}}
{{- fail "a null value cannot be written to the services' TOML configuration; remove the key instead" -}}
{{- else -}}
{{- toJson (toString .) -}}
{{- end -}}
{{- end -}}

{{/*
Name of a service's ServiceAccount: (dict "root" $ "svc" "key-service").
*/}}
{{- define "keymesh.serviceAccountName" -}}
{{- $cfg := index .root.Values.services .svc -}}
{{- $own := dig "serviceAccount" "name" "" $cfg -}}
{{- if .root.Values.serviceAccount.create -}}
{{- $own | default (include "keymesh.serviceName" .) -}}
{{- else -}}
{{- $own | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
The replica count of a service's Deployment. A service that keeps state but has no database Secret (a trial with
allowEphemeralState) keeps it in SQLite in its pod: one replica, or each pod would be a mesh of its own.
*/}}
{{- define "keymesh.replicas" -}}
{{- $cfg := index .root.Values.services .svc -}}
{{- $facts := index (fromYaml (include "keymesh.topology" .root)) .svc -}}
{{- if and $facts.database (not (include "keymesh.databaseSecret" .)) -}}
1
{{- else -}}
{{- int $cfg.replicas -}}
{{- end -}}
{{- end -}}

{{/*
Replicas a service runs with at least: its HPA's minimum when autoscaling, else its replica count.
*/}}
{{- define "keymesh.minReplicas" -}}
{{- $cfg := index .root.Values.services .svc -}}
{{- if dig "autoscaling" "enabled" false $cfg -}}
{{- int (dig "autoscaling" "minReplicas" 1 $cfg) -}}
{{- else -}}
{{- include "keymesh.replicas" . -}}
{{- end -}}
{{- end -}}

{{/*
Fails the render on settings that cannot work. Renders nothing. values.schema.json refuses most of these
already (so `helm lint` does too); what needs the whole picture is checked here.
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
{{- $auditDb := include "keymesh.databaseSecret" (dict "root" $root "svc" "audit-service") -}}
{{- if and (gt (int $audit.replicas) 1) (not $auditDb) -}}
{{- fail "services.audit-service.replicas above 1 (or autoscaling) need a shared Postgres (database.existingSecret or services.audit-service.database.existingSecret): replicas take turns appending to one chain under its lock" -}}
{{- end -}}
{{- range $svc := list "key-service" "token-service" "audit-service" -}}
{{- $cfg := index $root.Values.services $svc -}}
{{- if and (dig "autoscaling" "enabled" false $cfg) (not (include "keymesh.databaseSecret" (dict "root" $root "svc" $svc))) -}}
{{- fail (printf "services.%s.autoscaling needs a shared Postgres (database.existingSecret or services.%s.database.existingSecret): without one each pod keeps its own state" $svc $svc) -}}
{{- end -}}
{{- end -}}
{{- range $svc := splitList " " (include "keymesh.serviceNames" $root) -}}
{{- if eq (int (index $root.Values.services $svc).port) (int $root.Values.adminPort) -}}
{{- fail (printf "services.%s.port and adminPort are both %d: the admin port needs a port of its own" $svc (int $root.Values.adminPort)) -}}
{{- end -}}
{{- end -}}
{{- /* The keyring: every member named is defined (or the implicit "local"), every backend defined is a member. A
local backend must be the one the chart provides for: the master key in KEYMESH_MASTER_KEY and local-kms.json in
the data directory. */ -}}
{{- $kms := $root.Values.kms | default dict -}}
{{- $backends := $kms.backends | default dict -}}
{{- $members := concat (list ($kms.primary | default "local")) ($kms.secondary | default list) ($kms.retired | default list) -}}
{{- range $tenant := values ($kms.tenants | default dict) -}}
{{- $members = concat $members (list $tenant.primary) ($tenant.secondary | default list) ($tenant.retired | default list) -}}
{{- end -}}
{{- range $name := $members -}}
{{- if and (not (hasKey $backends $name)) (ne $name "local") -}}
{{- fail (printf "kms: the keyring names %q, which kms.backends does not define" $name) -}}
{{- end -}}
{{- end -}}
{{- range $name, $backend := $backends -}}
{{- if not (has $name $members) -}}
{{- fail (printf "kms.backends.%s is defined but in no keyring: name it in kms.primary, secondary or retired (or a tenant's), or remove it" $name) -}}
{{- end -}}
{{- if and (eq (toString $backend.type) "local") (or $backend.data_dir $backend.master_key_env $backend.master_key_file) -}}
{{- fail (printf "kms.backends.%s: the chart provides one local backend's master key and local-kms.json (masterKey.*), in the data directory; data_dir, master_key_env and master_key_file need extraEnv and extraVolumes and are not supported here" $name) -}}
{{- end -}}
{{- end -}}
{{- if not (has $root.Values.tls.mode (list "cert-manager" "secrets")) -}}
{{- fail (printf "tls.mode must be \"cert-manager\" or \"secrets\", not %q" (toString $root.Values.tls.mode)) -}}
{{- end -}}
{{- $needed := add (int $root.Values.preStopSleepSeconds) (int $root.Values.shutdownGraceSeconds) -}}
{{- if ge $needed (int $root.Values.terminationGracePeriodSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + shutdownGraceSeconds (%d)" (int $root.Values.terminationGracePeriodSeconds) $needed) -}}
{{- end -}}
{{- if and $root.Values.tests.enabled (eq $root.Values.tls.mode "secrets") (not $root.Values.tests.tlsSecret) -}}
{{- fail "tests.tlsSecret is required when tls.mode is secrets and tests.enabled: the helm test pod needs a client certificate (URI SAN spiffe://keymesh/app/<name>) from the mesh CA" -}}
{{- end -}}
{{- if not $root.Values.allowEphemeralState -}}
{{- if and (include "keymesh.localKmsInUse" $root) (not $root.Values.masterKey.existingSecret) -}}
{{- fail "masterKey.existingSecret is required: the KMS keyring has a local backend, which needs the master key and local-kms.json (or set allowEphemeralState=true to try the chart out)" -}}
{{- end -}}
{{- $topology := fromYaml (include "keymesh.topology" $root) -}}
{{- range $svc := splitList " " (include "keymesh.serviceNames" $root) -}}
{{- if (index $topology $svc).database -}}
{{- if not (include "keymesh.databaseSecret" (dict "root" $root "svc" $svc)) -}}
{{- fail (printf "database.existingSecret (or services.%s.database.existingSecret) is required (or set allowEphemeralState=true to try the chart out)" $svc) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The services' configuration file (KEYMESH_CONFIG) as every service reads it: [kms] from kms.*, and any other section
from config.*. The services' pods carry its checksum, so a change rolls them.
*/}}
{{- define "keymesh.configToml" -}}
{{- $root := . -}}
{{- $kms := fromYaml (include "keymesh.kmsConfig" .) -}}
{{- include "keymesh.tomlTable" (dict "path" "kms" "table" $kms) -}}
{{- range $section := keys (.Values.config | default dict) | sortAlpha -}}
{{- if eq $section "kms" -}}
{{- fail "config.kms: set the keyring under kms, not config.kms" -}}
{{- end -}}
{{- if eq $section "console" -}}
{{- fail "config.console: set the admin console under console, not config.console" -}}
{{- end -}}
{{- $table := index $root.Values.config $section -}}
{{- if not (kindIs "map" $table) -}}
{{- fail (printf "config.%s must be a map (a TOML section of the services' configuration)" $section) -}}
{{- end -}}
{{- include "keymesh.tomlTable" (dict "path" (toJson $section) "table" $table) -}}
{{- end -}}
{{- end -}}

{{/*
[console] of the same file, when the console is enabled: its settings (console.*). What depends on the pod's layout
(the listen address, the certificate, client-secret and CA files) is in the console Deployment's KEYMESH_CONSOLE__*
variables instead, as the services' file paths are in theirs. The services ignore [console] (keymesh-config knows
it as the console's own section), and their checksum leaves it out: a console setting rolls the console only.
There is deliberately no dev_login: the development login is for loopback only.
*/}}
{{- define "keymesh.consoleToml" -}}
{{- $c := .Values.console | default dict -}}
{{- if $c.enabled -}}
{{- $oidc := $c.oidc | default dict -}}
{{- $o := dict "issuer" $oidc.issuer "client_id" (toString $oidc.clientId) -}}
{{- with $oidc.scopes }}{{- $_ := set $o "scopes" . -}}{{- end -}}
{{- with $oidc.displayName }}{{- $_ := set $o "display_name" (toString .) -}}{{- end -}}
{{- $t := dict "public_url" (trimSuffix "/" $c.publicUrl) "oidc" $o -}}
{{- $_ := set $t "session_idle_minutes" (int ($c.sessionIdleMinutes | default 30)) -}}
{{- $_ := set $t "session_absolute_hours" (int ($c.sessionAbsoluteHours | default 8)) -}}
{{- include "keymesh.tomlTable" (dict "path" "console" "table" $t) -}}
{{- end -}}
{{- end -}}

{{/*
Name of the console's Deployment, Service, Ingress, NetworkPolicy, ServiceAccount and Certificate.
*/}}
{{- define "keymesh.consoleName" -}}
{{- printf "%s-console" (include "keymesh.prefix" .) -}}
{{- end -}}

{{/*
The console's settings that need the whole picture (values.schema.json checks the rest). Renders nothing.
*/}}
{{- define "keymesh.validateConsole" -}}
{{- $c := .Values.console | default dict -}}
{{- if $c.enabled -}}
{{- $oidc := $c.oidc | default dict -}}
{{- if not (hasPrefix "https://" (toString $c.publicUrl)) -}}
{{- fail "console.publicUrl must be the https:// URL browsers reach the console at (the console refuses http:// beyond loopback)" -}}
{{- end -}}
{{- if not (hasPrefix "https://" (toString $oidc.issuer)) -}}
{{- fail "console.oidc.issuer must be the provider's https:// issuer URL" -}}
{{- end -}}
{{- if not $oidc.clientId -}}
{{- fail "console.oidc.clientId is required: the console's client id at the provider" -}}
{{- end -}}
{{- if not $oidc.existingSecret -}}
{{- fail "console.oidc.existingSecret is required: the Secret holding the console's OIDC client secret" -}}
{{- end -}}
{{- if gt (int ($c.replicas | default 1)) 1 -}}
{{- fail "console.replicas must be 1: sessions and sign-ins in progress live in the pod's memory" -}}
{{- end -}}
{{- if eq (int $c.port) (int .Values.adminPort) -}}
{{- fail (printf "console.port and adminPort are both %d" (int .Values.adminPort)) -}}
{{- end -}}
{{- $publicHost := (urlParse $c.publicUrl).host | regexFind "^[^:]+" -}}
{{- if and (dig "ingress" "enabled" false $c) $c.ingress.host (ne $c.ingress.host $publicHost) -}}
{{- fail (printf "console.ingress.host %q is not the host of console.publicUrl (%q): browsers would reach the console at another origin than it accepts forms and cookies for" $c.ingress.host $publicHost) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
"true" when `svc` counts its rate limits and quotas in Redis: crypto-service, key-service and token-service apply
limits, audit-service none.
*/}}
{{- define "keymesh.sharesLimits" -}}
{{- $redis := .root.Values.redis -}}
{{- if and $redis.existingSecret (ne (toString $redis.shareLimits) "false") (has .svc (list "crypto-service" "key-service" "token-service")) -}}
true
{{- end -}}
{{- end -}}
