{{/* The image both parts run. */}}
{{- define "weir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "weir.labels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
weir.yaml, shared by the node agents and the operator (which reads the
filters of it). weir follows this file: a changed ConfigMap is applied by
hot reload, without restarting anything.
*/}}
{{- define "weir.config" -}}
{{- $n := .Values.node -}}
{{- $datapath := dict "proxy_port" (int $n.proxyPort) "dns_proxy_port" (int $n.dnsProxyPort) "devices" $n.devices "bpffs" (printf "%s/weir" $n.bpffs) "route_table" (int $n.routeTable) "rule_priority" (int $n.rulePriority) -}}
{{- /* only when not the default: a weir before host_routing refuses the key */ -}}
{{- if ne $n.hostRouting "bpf" }}{{- $_ := set $datapath "host_routing" $n.hostRouting -}}{{- end }}
{{- if kindIs "slice" $n.nat64Prefixes }}{{- $_ := set $datapath "nat64_prefixes" $n.nat64Prefixes -}}{{- end }}
{{- if kindIs "map" $n.marks }}{{- $_ := set $datapath "marks" $n.marks -}}{{- end }}
{{- $dns := dict "refusal" $n.dns.refusal "upstream_timeout" $n.dns.upstreamTimeout "min_ttl" $n.dns.minTtl "max_ips_per_name" (int $n.dns.maxIpsPerName) "cache_file" (printf "%s/fqdn-cache.json" $n.stateDir) -}}
{{- $config := dict "admin" (printf "127.0.0.1:%d" (int $n.adminPort)) "metrics" (printf "0.0.0.0:%d" (int $n.metricsPort)) "log_flows" $n.flows.log "flow_history" (int $n.flows.history) "filter_cache" (printf "%s/filter-cache" $n.stateDir) "drain_timeout" $n.drainTimeout "datapath" $datapath "dns" $dns -}}
{{- if gt (int $n.workers) 0 }}{{ $_ := set $config "workers" (int $n.workers) }}{{ end -}}
{{- toYaml (mustMergeOverwrite $config (deepCopy $n.extraConfig)) -}}
{{- end -}}
