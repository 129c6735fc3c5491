{{/* Names and labels. */}}
{{- define "jwks-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jwks-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "jwks-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jwks-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jwks-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jwks-sidecar.labels" -}}
helm.sh/chart: {{ include "jwks-sidecar.chart" . }}
{{ include "jwks-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ ternary "app" "authz" (eq .Values.mode "sidecar") }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "jwks-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jwks-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jwks-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* A service-account token is mounted only when asked for or when a provider reads the
cluster's own issuer. */}}
{{- define "jwks-sidecar.automountToken" -}}
{{- $need := .Values.serviceAccount.automountToken }}
{{- range .Values.providers }}
{{- $p := . }}
{{- if .useServiceAccountToken }}{{ $need = true }}{{ end }}
{{- range $k := list "issuer" "jwks_uri" "discovery_url" }}
{{- if contains "kubernetes.default.svc" (toString (get $p $k)) }}{{ $need = true }}{{ end }}
{{- end }}
{{- end }}
{{- ternary "true" "false" (eq (toString $need) "true") }}
{{- end }}

{{/* --- TOML rendering -------------------------------------------------------------
Helm's toToml renders every YAML number as a float ("16384.0"), which the config loader
rejects for integer keys; these templates render integral numbers as integers. Nested
tables are written inline, null values are left out. */}}
{{- define "jwks-sidecar.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "jwks-sidecar.toml.value" -}}
{{- $v := . }}
{{- if kindIs "map" $v }}
{{- $parts := list }}
{{- range $k := keys $v | sortAlpha }}
{{- $x := index $v $k }}
{{- if not (kindIs "invalid" $x) }}
{{- $parts = append $parts (printf "%s = %s" (include "jwks-sidecar.toml.key" $k) (include "jwks-sidecar.toml.value" $x)) }}
{{- end }}
{{- end }}
{{- if $parts }}{ {{ join ", " $parts }} }{{ else }}{}{{ end }}
{{- else if kindIs "slice" $v }}
{{- $parts := list }}
{{- range $v }}{{ $parts = append $parts (include "jwks-sidecar.toml.value" .) }}{{ end }}
{{- printf "[%s]" (join ", " $parts) }}
{{- else if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}
{{- $v }}
{{- else }}
{{- fail (printf "jwks-sidecar: cannot render %v (%s) as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "jwks-sidecar.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}{{ if kindIs "map" (first .) }}true{{ end }}{{ end }}
{{- end }}

{{/* A whole document: top-level keys, then [tables], then [[arrays of tables]]. */}}
{{- define "jwks-sidecar.toml.document" -}}
{{- $doc := . }}
{{- range $k := keys $doc | sortAlpha }}
{{- $v := index $doc $k }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "jwks-sidecar.toml.isTableArray" $v)) }}
{{ include "jwks-sidecar.toml.key" $k }} = {{ include "jwks-sidecar.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $doc | sortAlpha }}
{{- $v := index $doc $k }}
{{- if kindIs "map" $v }}

[{{ include "jwks-sidecar.toml.key" $k }}]
{{- range $kk := keys $v | sortAlpha }}
{{- $x := index $v $kk }}
{{- if not (kindIs "invalid" $x) }}
{{ include "jwks-sidecar.toml.key" $kk }} = {{ include "jwks-sidecar.toml.value" $x }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k := keys $doc | sortAlpha }}
{{- $v := index $doc $k }}
{{- if include "jwks-sidecar.toml.isTableArray" $v }}
{{- range $v }}
{{- $item := . }}

[[{{ include "jwks-sidecar.toml.key" $k }}]]
{{- range $kk := keys $item | sortAlpha }}
{{- $x := index $item $kk }}
{{- if not (kindIs "invalid" $x) }}
{{ include "jwks-sidecar.toml.key" $kk }} = {{ include "jwks-sidecar.toml.value" $x }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* --- The configuration, as a dict (JSON), before rendering. ----------------------- */}}
{{- define "jwks-sidecar.upstream" -}}
{{- if .Values.proxy.upstream }}
{{- .Values.proxy.upstream }}
{{- else if eq .Values.mode "sidecar" }}
{{- printf "http://127.0.0.1:%d" (int .Values.app.port) }}
{{- else }}
{{- fail "jwks-sidecar: mode=standalone needs proxy.upstream (the Service the proxy forwards to), e.g. http://my-api.default.svc.cluster.local:8080" }}
{{- end }}
{{- end }}

{{- define "jwks-sidecar.secretPath" -}}
{{- printf "/var/run/secrets/jwks-sidecar/%s/%s" .secretName .secretKey }}
{{- end }}

{{/* Where a provider's caFrom (ConfigMap or Secret) is mounted. */}}
{{- define "jwks-sidecar.caPath" -}}
{{- if .configMap }}{{ printf "/etc/ssl/jwks-sidecar/configmap-%s/%s" .configMap .key }}{{ else }}{{ printf "/etc/ssl/jwks-sidecar/secret-%s/%s" .secret .key }}{{ end }}
{{- end }}

{{- define "jwks-sidecar.configDict" -}}
{{- $v := .Values }}
{{- if not $v.providers }}
{{- fail "jwks-sidecar: set at least one entry in providers (name, issuer, jwks_uri or discovery: true, audiences); see values.yaml" }}
{{- end }}
{{- $proxy := dict
  "listen" (printf "0.0.0.0:%d" (int $v.ports.proxy))
  "upstream" (include "jwks-sidecar.upstream" .)
  "public_paths" $v.proxy.publicPaths
  "identity_header_prefix" $v.proxy.identityHeaderPrefix
  "forward_authorization" $v.proxy.forwardAuthorization
  "upstream_timeout" $v.proxy.upstreamTimeout
  "shutdown_grace" $v.proxy.shutdownGrace }}
{{- if $v.proxy.payloadHeader }}{{ $_ := set $proxy "payload_header" $v.proxy.payloadHeader }}{{ end }}
{{- $cfg := dict
  "proxy" $proxy
  "admin" (dict "listen" (printf "0.0.0.0:%d" (int $v.ports.admin)))
  "log" (dict "format" $v.log.format "level" $v.log.level) }}
{{- if $v.authz.enabled }}
{{- $authz := dict "listen" (printf "0.0.0.0:%d" (int $v.ports.authzHttp)) }}
{{- if $v.authz.grpc }}{{ $_ := set $authz "grpc_listen" (printf "0.0.0.0:%d" (int $v.ports.authzGrpc)) }}{{ end }}
{{- if $v.authz.pathPrefix }}{{ $_ := set $authz "path_prefix" $v.authz.pathPrefix }}{{ end }}
{{- $_ := set $cfg "authz" $authz }}
{{- end }}
{{- if $v.cache.enabled }}
{{- $_ := set $cfg "jwks" (dict "cache_dir" $v.cache.mountPath) }}
{{- end }}
{{- $providers := list }}
{{- range $v.providers }}
{{- $p := omit (deepCopy .) "fetchHeaders" "caFrom" "useServiceAccountToken" }}
{{- $fh := list }}
{{- range .fetchHeaders }}
{{- $h := dict "name" .name "value_from_file" (include "jwks-sidecar.secretPath" .) }}
{{- if .prefix }}{{ $_ := set $h "prefix" .prefix }}{{ end }}
{{- $fh = append $fh $h }}
{{- end }}
{{- if .useServiceAccountToken }}
{{- $fh = append $fh (dict "name" "authorization" "value_from_file" "/var/run/secrets/kubernetes.io/serviceaccount/token" "prefix" "Bearer ") }}
{{- if not .caFrom }}{{ $_ := set $p "ca_file" "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt" }}{{ end }}
{{- end }}
{{- if $fh }}{{ $_ := set $p "fetch_headers" (concat (default list .fetch_headers) $fh) }}{{ end }}
{{- with .caFrom }}{{ $_ := set $p "ca_file" (include "jwks-sidecar.caPath" .) }}{{ end }}
{{- $providers = append $providers $p }}
{{- end }}
{{- $_ := set $cfg "providers" $providers }}
{{- $cfg = mergeOverwrite $cfg (deepCopy $v.config) }}
{{- toJson $cfg }}
{{- end }}

{{- define "jwks-sidecar.configToml" -}}
# Rendered by the jwks-sidecar Helm chart from its values; see config.example.toml for
# every key. Edit the values, not this ConfigMap.
{{ include "jwks-sidecar.toml.document" (include "jwks-sidecar.configDict" . | fromJson) | trim }}
{{- end }}

{{/* Secrets referenced by providers[].fetchHeaders, deduplicated by name. */}}
{{- define "jwks-sidecar.fetchSecrets" -}}
{{- $names := list }}
{{- range .Values.providers }}{{ range .fetchHeaders }}{{ $names = append $names .secretName }}{{ end }}{{ end }}
{{- toJson ($names | uniq | sortAlpha) }}
{{- end }}

{{/* ConfigMaps and Secrets referenced by providers[].caFrom, deduplicated. */}}
{{- define "jwks-sidecar.caSources" -}}
{{- $seen := dict }}
{{- $out := list }}
{{- range .Values.providers }}
{{- with .caFrom }}
{{- $src := ternary (dict "kind" "configmap" "name" .configMap) (dict "kind" "secret" "name" .secret) (not (empty .configMap)) }}
{{- $id := printf "%s/%s" $src.kind $src.name }}
{{- if not (hasKey $seen $id) }}{{ $_ := set $seen $id true }}{{ $out = append $out $src }}{{ end }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "jwks-sidecar.terminationGrace" -}}
{{- $grace := 30 }}
{{- $s := toString .Values.proxy.shutdownGrace }}
{{- if regexMatch "^[0-9]+s$" $s }}{{ $grace = trimSuffix "s" $s | int }}{{ else if regexMatch "^[0-9]+m$" $s }}{{ $grace = mul (trimSuffix "m" $s | int) 60 }}{{ end }}
{{- add $grace (int .Values.preStopSleepSeconds) 5 }}
{{- end }}

{{/* The jwks-sidecar container. In sidecar mode it is an init container with
restartPolicy: Always (a native sidecar: started before the app, stopped after it). */}}
{{- define "jwks-sidecar.container" -}}
- name: jwks-sidecar
  image: {{ include "jwks-sidecar.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.mode "sidecar" }}
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - /etc/jwks-sidecar/config.toml
    {{- with .Values.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: proxy
      containerPort: {{ .Values.ports.proxy }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    {{- if .Values.authz.enabled }}
    - name: authz-http
      containerPort: {{ .Values.ports.authzHttp }}
      protocol: TCP
    {{- if .Values.authz.grpc }}
    - name: authz-grpc
      containerPort: {{ .Values.ports.authzGrpc }}
      protocol: TCP
    {{- end }}
    {{- end }}
  {{- with .Values.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.probes }}
  startupProbe:
    httpGet:
      path: {{ .startup.path }}
      port: admin
    periodSeconds: {{ .startup.periodSeconds }}
    failureThreshold: {{ .startup.failureThreshold }}
    timeoutSeconds: {{ .startup.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: {{ .liveness.path }}
      port: admin
    periodSeconds: {{ .liveness.periodSeconds }}
    failureThreshold: {{ .liveness.failureThreshold }}
    timeoutSeconds: {{ .liveness.timeoutSeconds }}
  readinessProbe:
    httpGet:
      path: {{ .readiness.path }}
      port: admin
    periodSeconds: {{ .readiness.periodSeconds }}
    failureThreshold: {{ .readiness.failureThreshold }}
    timeoutSeconds: {{ .readiness.timeoutSeconds }}
  {{- end }}
  {{- if gt (int .Values.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ .Values.preStopSleepSeconds }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/jwks-sidecar
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- if .Values.cache.enabled }}
    - name: jwks-cache
      mountPath: {{ .Values.cache.mountPath }}
    {{- end }}
    {{- range (include "jwks-sidecar.fetchSecrets" . | fromJsonArray) }}
    - name: {{ printf "secret-%s" . | trunc 63 | trimSuffix "-" }}
      mountPath: {{ printf "/var/run/secrets/jwks-sidecar/%s" . }}
      readOnly: true
    {{- end }}
    {{- range (include "jwks-sidecar.caSources" . | fromJsonArray) }}
    - name: {{ printf "ca-%s-%s" .kind .name | trunc 63 | trimSuffix "-" }}
      mountPath: {{ printf "/etc/ssl/jwks-sidecar/%s-%s" .kind .name }}
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* Volumes of the jwks-sidecar container. */}}
{{- define "jwks-sidecar.volumes" -}}
- name: config
  configMap:
    name: {{ include "jwks-sidecar.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: 8Mi
{{- if .Values.cache.enabled }}
- name: jwks-cache
  emptyDir:
    sizeLimit: {{ .Values.cache.sizeLimit }}
{{- end }}
{{- range (include "jwks-sidecar.fetchSecrets" . | fromJsonArray) }}
- name: {{ printf "secret-%s" . | trunc 63 | trimSuffix "-" }}
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- range (include "jwks-sidecar.caSources" . | fromJsonArray) }}
- name: {{ printf "ca-%s-%s" .kind .name | trunc 63 | trimSuffix "-" }}
  {{- if eq .kind "configmap" }}
  configMap:
    name: {{ .name }}
  {{- else }}
  secret:
    secretName: {{ .name }}
  {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
