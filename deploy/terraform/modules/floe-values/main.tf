# Turns the inputs of a Floe install on AWS into the Helm chart's values
# and the names and IAM policy the AWS module creates. No provider: this
# is the part `terraform test` runs here.

terraform {
  required_version = ">= 1.6"
}

locals {
  # One bucket per zone (each zone's data stays in its zone; replica sets
  # span zones), or one bucket for every zone.
  buckets = var.bucket_per_zone ? {
    for z in var.zones : z => "${var.bucket_prefix}-${z}"
    } : {
    for z in var.zones : z => var.bucket_prefix
  }
  prefix = trim(var.object_prefix, "/")
  targets = [
    for z in var.zones : {
      url  = "s3://${local.buckets[z]}/${local.prefix}${var.bucket_per_zone ? "" : "/${z}"}?region=${var.region}"
      zone = z
    }
  ]
  replicas     = var.replicas
  write_quorum = var.write_quorum

  bucket_arns = distinct([for z in var.zones : "arn:aws:s3:::${local.buckets[z]}"])
  object_arns = distinct([
    for z in var.zones : "arn:aws:s3:::${local.buckets[z]}/${local.prefix}/*"
  ])

  # Least privilege: list the Floe prefix, read, write and delete objects
  # under it, nothing else.
  policy = {
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ListFloePrefix"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = local.bucket_arns
        Condition = {
          StringLike = { "s3:prefix" = ["${local.prefix}/*", local.prefix] }
        }
      },
      {
        Sid      = "FloeObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
        Resource = local.object_arns
      },
    ]
  }

  values = {
    image = {
      repository = var.image_repository
      tag        = var.image_tag
    }
    etcd = length(var.etcd_endpoints) > 0 ? {
      endpoints = var.etcd_endpoints
      bundled   = { enabled = false }
      } : {
      endpoints = []
      bundled   = { enabled = true }
    }
    storage = {
      targets     = local.targets
      replicas    = local.replicas
      writeQuorum = local.write_quorum
      env         = { AWS_REGION = var.region }
    }
    serviceAccount = {
      create = true
      name   = var.service_account
      annotations = var.role_arn == "" ? {} : {
        "eks.amazonaws.com/role-arn" = var.role_arn
      }
    }
    admin = {
      existingSecret = var.admin_secret
    }
    controller = { replicas = var.controllers }
    broker     = { replicas = var.brokers }
    proxy      = { replicas = var.proxies }
  }
}
