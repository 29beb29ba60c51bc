{{/*
Names, labels, the image, and the chartcache TOML configuration the ConfigMaps carry.
*/}}

{{- define "chartcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "chartcache.fullname" -}}
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

{{- define "chartcache.tierName" -}}
{{- printf "%s-tier" (include "chartcache.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chartcache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chartcache.labels" -}}
helm.sh/chart: {{ include "chartcache.chart" . }}
app.kubernetes.io/name: {{ include "chartcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chartcache
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one role: node (the DaemonSet) or tier. */}}
{{- define "chartcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chartcache.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "chartcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chartcache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chartcache.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "chartcache.adminSecretName" -}}
{{- default (printf "%s-admin" (include "chartcache.fullname" .)) .Values.admin.existingSecret }}
{{- end }}

{{/* The tier's repository address, which the node-local pods use as their upstream. */}}
{{- define "chartcache.tierUrl" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "chartcache.tierName" .) .Release.Namespace .Values.clusterDomain (int .Values.tier.servicePort) }}
{{- end }}

{{/* The driver and seccomp profile the pods run with (see values: ioUring). */}}
{{- define "chartcache.seccompProfile" -}}
{{- if .Values.ioUring.enabled }}
type: Localhost
localhostProfile: profiles/{{ .Values.ioUring.profileName }}
{{- else }}
type: RuntimeDefault
{{- end }}
{{- end }}

{{/* One TOML key = value line; the value as JSON, which is a valid TOML string, integer or boolean. */}}
{{- define "chartcache.tomlKey" -}}
{{ .key | snakecase }} = {{ toJson .value }}
{{- end }}

{{/* `[[<table>]]` route rules from a list of rule values. */}}
{{- define "chartcache.tomlRules" -}}
{{- $table := .table }}
{{- range .rules }}

[[{{ $table }}]]
match = { {{- range $k, $v := .match }} {{ $k }} = {{ toJson $v }} {{- end }} }
action = {{ toJson .action }}
{{- if .ttl }}
ttl = {{ toJson .ttl }}
{{- end }}
{{- if .freshFor }}
fresh_for = {{ toJson .freshFor }}
{{- end }}
{{- with .headers }}
headers = { {{- $first := true }}{{ range $k, $v := . }}{{ if not $first }},{{ end }}{{ $first = false }} {{ toJson $k }} = {{ toJson $v }}{{ end }} }
{{- end }}
{{- end }}
{{- end }}

{{/*
The chartcache TOML of one role. role=tier: the tier pods (upstreams as configured).
role=node: the node-local pods; with the tier enabled their repositories point at the tier
(same prefixes, no S3 settings: the tier holds the credentials).
*/}}
{{- define "chartcache.config" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $viaTier := and (eq .role "node") $v.tier.enabled }}
{{- if and $v.upstream $v.repos }}
{{- fail "upstream and repos: give one (upstream is the shortcut for a single repository at /)" }}
{{- end -}}
# chartcache configuration ({{ .role }}), rendered by the chart; see `chartcache --help`.
listen = {{ printf "0.0.0.0:%d" (int $v.ports.http) | toJson }}
admin = {{ printf "0.0.0.0:%d" (int $v.ports.admin) | toJson }}
cache_dir = "/var/cache/chartcache"
cache_size = {{ (eq .role "tier" | ternary $v.tier.cacheSize $v.cache.size) | toJson }}
driver = {{ $v.ioUring.enabled | ternary "auto" "epoll" | toJson }}
{{- range $key, $value := $v.config }}
{{- if and (not (kindIs "invalid" $value)) (not (and $viaTier (has $key (list "profile")))) }}
{{ include "chartcache.tomlKey" (dict "key" $key "value" $value) }}
{{- end }}
{{- end }}
{{- if $viaTier }}
{{- if $v.repos }}
{{- range $v.repos }}

[[repos]]
prefix = {{ toJson .prefix }}
upstream = {{ printf "%s%s" (include "chartcache.tierUrl" $root) .prefix | toJson }}
{{- range $key, $value := omit . "prefix" "upstream" "rules" "region" "s3Endpoint" "profile" }}
{{ include "chartcache.tomlKey" (dict "key" $key "value" $value) }}
{{- end }}
{{- include "chartcache.tomlRules" (dict "table" "repos.rules" "rules" (default list .rules)) }}
{{- end }}
{{- else }}
upstream = {{ include "chartcache.tierUrl" $root | toJson }}
{{- end }}
{{- else }}
{{- if $v.upstream }}
upstream = {{ toJson $v.upstream }}
{{- end }}
{{- if $v.region }}
region = {{ toJson $v.region }}
{{- end }}
{{- if $v.s3Endpoint }}
s3_endpoint = {{ toJson $v.s3Endpoint }}
{{- end }}
{{- range $v.repos }}

[[repos]]
prefix = {{ toJson .prefix }}
upstream = {{ toJson .upstream }}
{{- range $key, $value := omit . "prefix" "upstream" "rules" }}
{{ include "chartcache.tomlKey" (dict "key" $key "value" $value) }}
{{- end }}
{{- include "chartcache.tomlRules" (dict "table" "repos.rules" "rules" (default list .rules)) }}
{{- end }}
{{- end }}
{{- include "chartcache.tomlRules" (dict "table" "rules" "rules" $v.rules) }}
{{- end }}

{{/* The chartcache container of one role (node or tier); `resources` is the role's. */}}
{{- define "chartcache.container" -}}
{{- $v := .root.Values -}}
- name: chartcache
  image: {{ include "chartcache.image" .root }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - --config=/etc/chartcache/chartcache.toml
  env:
    - name: CHARTCACHE_ADMIN_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "chartcache.adminSecretName" .root }}
          key: {{ $v.admin.existingSecretKey }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ $v.ports.http }}
      {{- if and (eq .role "node") $v.hostPort.enabled }}
      hostPort: {{ $v.hostPort.port }}
      {{- end }}
      protocol: TCP
    - name: admin
      containerPort: {{ $v.ports.admin }}
      protocol: TCP
  # The cache index may be replayed after an unclean stop: startup gives it time before
  # liveness counts.
  startupProbe:
    httpGet:
      path: /healthz
      port: admin
    {{- toYaml $v.probes.startup | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    {{- toYaml $v.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    {{- toYaml $v.probes.liveness | nindent 4 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: cache
      mountPath: /var/cache/chartcache
    - name: config
      mountPath: /etc/chartcache
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* Pod-level security context with the chart's seccomp profile. */}}
{{- define "chartcache.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
seccompProfile:
  {{- include "chartcache.seccompProfile" . | nindent 2 }}
{{- end }}

{{/* The init container that installs the io_uring seccomp profile on the node (ioUring.enabled). */}}
{{- define "chartcache.seccompInitContainer" -}}
# Writes the io_uring seccomp profile (the runtime default plus io_uring_setup,
# io_uring_enter, io_uring_register) under the kubelet's seccomp directory, where the
# Localhost profile of the chartcache container is read when it is created (after the
# init containers). Root, no capabilities: the directory is root's own.
- name: seccomp-profile
  image: {{ include "chartcache.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - /bin/sh
    - -c
    - >-
      cp /profile/chartcache-iouring.json /host-seccomp/.{{ .Values.ioUring.profileName }}.tmp &&
      mv -f /host-seccomp/.{{ .Values.ioUring.profileName }}.tmp /host-seccomp/{{ .Values.ioUring.profileName }}
  securityContext:
    runAsNonRoot: false
    runAsUser: 0
    runAsGroup: 0
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 100m, memory: 32Mi}
  volumeMounts:
    - name: seccomp-profile
      mountPath: /profile
      readOnly: true
    - name: host-seccomp
      mountPath: /host-seccomp
{{- end }}

{{/* Its volumes. */}}
{{- define "chartcache.seccompVolumes" -}}
- name: seccomp-profile
  configMap:
    name: {{ include "chartcache.fullname" . }}-seccomp
- name: host-seccomp
  hostPath:
    path: {{ printf "%s/seccomp/profiles" (trimSuffix "/" .Values.ioUring.kubeletRootDir) }}
    type: DirectoryOrCreate
{{- end }}

{{/* The tier cache's emptyDir sizeLimit: its cache size plus 10 % (chartcache's files are
preallocated segments of the cache size, plus a small spool). */}}
{{- define "chartcache.tierSizeLimit" -}}
{{- $size := .Values.tier.cacheSize | toString }}
{{- $units := dict "KiB" "Ki" "MiB" "Mi" "GiB" "Gi" "TiB" "Ti" }}
{{- $out := "" }}
{{- range $from, $to := $units }}
{{- if hasSuffix $from $size }}
{{- $n := trimSuffix $from $size | float64 }}
{{- $out = printf "%d%s" (int (ceil (mulf $n 1.1))) $to }}
{{- end }}
{{- end }}
{{- if not $out }}
{{- fail (printf "tier.cacheSize %q: use a size in KiB, MiB, GiB or TiB (e.g. 8GiB), or set tier.cacheSizeLimit" $size) }}
{{- end }}
{{- $out }}
{{- end }}
