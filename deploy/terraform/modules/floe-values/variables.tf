variable "name" {
  description = "Name of the Floe cluster (buckets, role, release)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}$", var.name))
    error_message = "name: lower-case letters, digits and dashes, 2 to 41 characters."
  }
}

variable "region" {
  description = "AWS region of the buckets."
  type        = string
}

variable "zones" {
  description = "Availability zones the storage pool spans (one storage target each)."
  type        = list(string)
  validation {
    condition     = length(var.zones) > 0 && length(var.zones) == length(distinct(var.zones))
    error_message = "zones: at least one, each once."
  }
}

variable "bucket_prefix" {
  description = "Bucket name, or the prefix of one bucket per zone."
  type        = string
}

variable "bucket_per_zone" {
  description = "One bucket per zone (true) or one bucket for all zones."
  type        = bool
  default     = true
}

variable "object_prefix" {
  description = "Key prefix of Floe's objects in the buckets."
  type        = string
  default     = "floe"
  validation {
    condition     = length(trim(var.object_prefix, "/")) > 0
    error_message = "object_prefix must not be empty."
  }
}

variable "replicas" {
  description = "Replicas of every object (R); at most the number of zones."
  type        = number
  default     = 3
  validation {
    condition     = var.replicas >= 1 && var.replicas <= length(var.zones)
    error_message = "replicas must be between 1 and the number of zones (one storage target per zone)."
  }
}

variable "write_quorum" {
  description = "Acknowledgements that make a write durable (W), at most R."
  type        = number
  default     = 2
  validation {
    condition     = var.write_quorum >= 1 && var.write_quorum <= var.replicas
    error_message = "write_quorum must be between 1 and replicas."
  }
}

variable "role_arn" {
  description = "IAM role the service account assumes (IRSA); empty: none."
  type        = string
  default     = ""
}

variable "service_account" {
  description = "Name of the Kubernetes service account of the Floe pods."
  type        = string
  default     = "floe"
}

variable "etcd_endpoints" {
  description = "External etcd endpoints; empty: the chart's bundled etcd."
  type        = list(string)
  default     = []
}

variable "admin_secret" {
  description = "Secret (key `token`) holding the admin API's token."
  type        = string
  default     = ""
}

variable "image_repository" {
  type    = string
  default = "ghcr.io/floe-streaming/floe"
}

variable "image_tag" {
  type    = string
  default = ""
}

variable "controllers" {
  type    = number
  default = 2
}

variable "brokers" {
  type    = number
  default = 3
  validation {
    condition     = var.brokers >= 1
    error_message = "brokers must be at least 1."
  }
}

variable "proxies" {
  type    = number
  default = 2
  validation {
    condition     = var.proxies >= 1
    error_message = "proxies must be at least 1."
  }
}
