{{/*
Named templates. Those an application's chart uses in sidecar mode take this chart's own context,
which Helm (>= 3.7) hands to a parent chart as .Subcharts.<name>:

  {{- $se := index .Subcharts "sync-engine" }}
  {{- include "sync-engine.container" $se }}

A dict with just .Values (this chart's values as the application sees them) and .Release works
as well; the names below are built from those two alone, never from .Chart, so they come out the
same either way and in this chart's own templates.
*/}}

{{- define "sync-engine.name" -}}
{{- default "sync-engine" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sync-engine.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sync-engine.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sync-engine.configMapName" -}}
{{- printf "%s-pipeline" (include "sync-engine.fullname" .) -}}
{{- end -}}

{{- define "sync-engine.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sync-engine.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the objects this chart renders itself (they have .Chart). */}}
{{- define "sync-engine.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sync-engine.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The label of every pod that runs this pipeline, in either mode: the metrics Service and the
PodMonitor select on it. In sidecar mode the application adds it to its pod template:
  labels: {{- include "sync-engine.podLabels" $se | nindent 8 }}
*/}}
{{- define "sync-engine.podLabels" -}}
sync-engine/pipeline: {{ include "sync-engine.fullname" . }}
{{- end -}}

{{/*
Pod annotations: with rollOnConfigChange, a checksum of the pipeline, so a change rolls the pods.
In sidecar mode the application adds them to its pod template:
  annotations: {{- include "sync-engine.podAnnotations" $se | nindent 8 }}
*/}}
{{- define "sync-engine.podAnnotations" -}}
{{- if .Values.rollOnConfigChange -}}
checksum/sync-engine-pipeline: {{ include "sync-engine.pipeline" . | sha256sum }}
{{- end -}}
{{- end -}}

{{- define "sync-engine.image" -}}
{{- $tag := .Values.image.tag -}}
{{- if and (not $tag) (hasKey . "Chart") -}}
{{- $tag = .Chart.AppVersion -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (required "image.tag: set it (a context without .Chart has no appVersion to fall back on)" $tag) -}}
{{- end -}}
{{- end -}}

{{/*
The pipeline file, refused when it holds a secret: a password or secret key (the keys the
binary masks in its dumps) or a URL with a password. Those belong in `secrets`.
*/}}
{{- define "sync-engine.pipeline" -}}
{{- $pipeline := required "pipeline: the pipeline file (TOML) is required" .Values.pipeline -}}
{{- if regexMatch `(?m)^\s*"?[A-Za-z0-9_.]*(password|secret|ssl\.key\.pem)[A-Za-z0-9_.]*"?\s*=` $pipeline -}}
{{- fail "pipeline: it sets a password or secret key, which would land in a ConfigMap; mount it from a Secret instead (secrets.sqlPassword, secrets.redisPassword, secrets.kafkaSaslPassword: files read through SYNC_ENGINE__…_FILE), or use env with a secretKeyRef" -}}
{{- end -}}
{{- if regexMatch `://[^/:@\s"]+:[^/@\s"]+@` $pipeline -}}
{{- fail "pipeline: a URL in it carries a password (scheme://user:password@host), which would land in a ConfigMap; keep the user in the URL and set the password through secrets.sqlPassword or secrets.redisPassword" -}}
{{- end -}}
{{- $pipeline -}}
{{- end -}}

{{- define "sync-engine.hasSecretFiles" -}}
{{- $s := .Values.secrets -}}
{{- if or $s.sqlPassword.secretName $s.redisPassword.secretName $s.kafkaSaslPassword.secretName $s.caBundle.secretName $s.caBundle.configMapName -}}
true
{{- end -}}
{{- end -}}

{{/* Refuses more consumers than partitions. Context: .Values and .replicas. */}}
{{- define "sync-engine.checkReplicas" -}}
{{- if gt (int .replicas) (int .Values.partitions) -}}
{{- fail (printf "replicas (%d) > partitions (%d): a consumer group gives each partition to one member, so %d of them would sit idle; lower the replicas or raise partitions (after adding partitions to the topic)" (int .replicas) (int .Values.partitions) (sub (int .replicas) (int .Values.partitions))) -}}
{{- end -}}
{{- end -}}

{{/*
The sync-engine container, as one item of a containers or initContainers list. In sidecar mode
with sidecar.native it carries restartPolicy: Always and belongs in initContainers (a native
sidecar, Kubernetes >= 1.29); otherwise it belongs in containers.
*/}}
{{- define "sync-engine.container" -}}
{{- $v := .Values -}}
{{- $secretDir := "/var/run/secrets/sync-engine" -}}
- name: {{ $v.containerName }}
  image: {{ include "sync-engine.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if and (eq $v.mode "sidecar") $v.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  {{- with $v.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  args:
    - run
    - --pipeline
    - /etc/sync-engine/pipeline.toml
    {{- with $v.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    - name: SYNC_ENGINE__HTTP__LISTEN
      value: {{ printf "0.0.0.0:%d" (int $v.http.port) | quote }}
    {{- with $v.logFormat }}
    - name: SYNC_ENGINE_LOG_FORMAT
      value: {{ . | quote }}
    {{- end }}
    {{- if $v.secrets.sqlPassword.secretName }}
    - name: SYNC_ENGINE__SQL_PASSWORD_FILE
      value: {{ $secretDir }}/sql-password
    {{- end }}
    {{- if $v.secrets.redisPassword.secretName }}
    - name: SYNC_ENGINE__REDIS_PASSWORD_FILE
      value: {{ $secretDir }}/redis-password
    {{- end }}
    {{- if $v.secrets.kafkaSaslPassword.secretName }}
    - name: SYNC_ENGINE__KAFKA__CLIENT__SASL__PASSWORD_FILE
      value: {{ $secretDir }}/kafka-sasl-password
    {{- end }}
    {{- with $v.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: {{ $v.http.portName }}
      containerPort: {{ $v.http.port }}
      protocol: TCP
  {{- if $v.livenessProbe.enabled }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $v.http.portName }}
    {{- toYaml (omit $v.livenessProbe "enabled") | nindent 4 }}
  {{- end }}
  {{- if $v.readinessProbe.enabled }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $v.http.portName }}
    {{- toYaml (omit $v.readinessProbe "enabled") | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    # a directory, never a subPath: the ConfigMap's updates reach the file, and hot reload sees them
    - name: sync-engine-pipeline
      mountPath: /etc/sync-engine
      readOnly: true
    - name: sync-engine-tmp
      mountPath: /tmp
    {{- if include "sync-engine.hasSecretFiles" . }}
    - name: sync-engine-secrets
      mountPath: {{ $secretDir }}
      readOnly: true
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The volumes sync-engine.container mounts, as items of the pod's volumes list. */}}
{{- define "sync-engine.volumes" -}}
{{- $s := .Values.secrets -}}
- name: sync-engine-pipeline
  configMap:
    name: {{ include "sync-engine.configMapName" . }}
- name: sync-engine-tmp
  emptyDir:
    {{- with get .Values.tmp "sizeLimit" }}
    sizeLimit: {{ . }}
    {{- end }}
{{- if include "sync-engine.hasSecretFiles" . }}
- name: sync-engine-secrets
  projected:
    sources:
      {{- with $s.sqlPassword.secretName }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $s.sqlPassword.key }}
              path: sql-password
      {{- end }}
      {{- with $s.redisPassword.secretName }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $s.redisPassword.key }}
              path: redis-password
      {{- end }}
      {{- with $s.kafkaSaslPassword.secretName }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $s.kafkaSaslPassword.key }}
              path: kafka-sasl-password
      {{- end }}
      {{- with $s.caBundle.secretName }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $s.caBundle.key }}
              path: ca.pem
      {{- end }}
      {{- with $s.caBundle.configMapName }}
      - configMap:
          name: {{ . }}
          items:
            - key: {{ $s.caBundle.key }}
              path: ca.pem
      {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Checks of the values that the schema cannot express; rendered by templates/checks.yaml. */}}
{{- define "sync-engine.checks" -}}
{{- $v := .Values -}}
{{- if and $v.secrets.caBundle.secretName $v.secrets.caBundle.configMapName -}}
{{- fail "secrets.caBundle: set secretName or configMapName, not both (both would be ca.pem)" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled $v.metrics.podMonitor.enabled -}}
{{- fail "metrics: serviceMonitor and podMonitor would both scrape the same pods (every series twice); enable one" -}}
{{- end -}}
{{- if eq $v.mode "standalone" -}}
{{- include "sync-engine.checkReplicas" (dict "Values" $v "replicas" $v.replicas) -}}
{{- if $v.autoscaling.keda.enabled -}}
{{- include "sync-engine.checkReplicas" (dict "Values" $v "replicas" $v.autoscaling.keda.minReplicaCount) -}}
{{- end -}}
{{- else -}}
{{- if $v.autoscaling.keda.enabled -}}
{{- fail "autoscaling.keda: only in mode standalone; in sidecar mode the application's chart scales its own pods" -}}
{{- end -}}
{{- if and $v.sidecar.native (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "sidecar.native: native sidecars (restartPolicy: Always in initContainers) need Kubernetes >= 1.29, this is %s; set sidecar.native=false for a plain container" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}
{{- end -}}
