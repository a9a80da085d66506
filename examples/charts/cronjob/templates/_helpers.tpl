{{- define "cronjob.name" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
