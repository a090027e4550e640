variable "name" {
  description = "Name of the Floe cluster (release, role, bucket tags)."
  type        = string
}

variable "region" {
  type = string
}

variable "zones" {
  type = list(string)
}

variable "bucket_prefix" {
  type = string
}

variable "bucket_per_zone" {
  type    = bool
  default = true
}

variable "object_prefix" {
  type    = string
  default = "floe"
}

variable "replicas" {
  type    = number
  default = 3
}

variable "write_quorum" {
  type    = number
  default = 2
}

variable "namespace" {
  type    = string
  default = "streaming"
}

variable "service_account" {
  type    = string
  default = "floe"
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider."
  type        = string
}

variable "oidc_provider" {
  description = "The OIDC provider's URL without https:// (oidc.eks.<region>.amazonaws.com/id/<id>)."
  type        = string
}

variable "etcd_endpoints" {
  type    = list(string)
  default = []
}

variable "admin_secret" {
  type    = string
  default = ""
}

variable "image_repository" {
  type    = string
  default = "ghcr.io/floe-streaming/floe"
}

variable "image_tag" {
  type    = string
  default = ""
}

variable "brokers" {
  type    = number
  default = 3
}

variable "proxies" {
  type    = number
  default = 2
}

variable "chart_path" {
  description = "The chart: a path to deploy/helm/floe or a packaged chart."
  type        = string
  default     = "../../helm/floe"
}

variable "extra_values" {
  description = "More chart values, merged over the derived ones."
  type        = any
  default     = {}
}

variable "tags" {
  type    = map(string)
  default = {}
}
