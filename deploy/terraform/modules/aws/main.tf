# Floe on AWS: the buckets, the IAM role of Floe's service account (IRSA),
# and the Helm release of the chart wired to them. The inputs become chart
# values in ../floe-values (no provider, tested with `terraform test`);
# this module is written against the AWS provider 5.x and the Helm
# provider 2.x and has not been validated where it was written (no
# provider could be downloaded): run `terraform validate` first.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 3.0"
    }
  }
}

module "values" {
  source = "../floe-values"

  name             = var.name
  region           = var.region
  zones            = var.zones
  bucket_prefix    = var.bucket_prefix
  bucket_per_zone  = var.bucket_per_zone
  object_prefix    = var.object_prefix
  replicas         = var.replicas
  write_quorum     = var.write_quorum
  role_arn         = aws_iam_role.floe.arn
  service_account  = var.service_account
  etcd_endpoints   = var.etcd_endpoints
  admin_secret     = var.admin_secret
  image_repository = var.image_repository
  image_tag        = var.image_tag
  brokers          = var.brokers
  proxies          = var.proxies
}

locals {
  buckets = toset(module.values.bucket_names)
}

resource "aws_s3_bucket" "data" {
  for_each      = local.buckets
  bucket        = each.value
  force_destroy = false
  tags          = merge(var.tags, { "floe.dev/cluster" = var.name })
}

resource "aws_s3_bucket_public_access_block" "data" {
  for_each                = aws_s3_bucket.data
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Chunks are written whole; multipart uploads are only for sealed segments,
# and one abandoned by a dead broker is garbage after a day.
resource "aws_s3_bucket_lifecycle_configuration" "data" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "tls_only" {
  for_each = aws_s3_bucket.data

  statement {
    sid     = "DenyWithoutTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      each.value.arn,
      "${each.value.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id
  policy   = data.aws_iam_policy_document.tls_only[each.key].json
}

# IRSA: only the Floe service account of this namespace may assume the role.
data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "floe" {
  name               = "floe-${var.name}"
  assume_role_policy = data.aws_iam_policy_document.trust.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "floe" {
  name = "floe-objects"
  role = aws_iam_role.floe.id
  # Read, write and delete under the Floe prefix; list the prefix.
  policy = module.values.policy_json
}

resource "helm_release" "floe" {
  name             = var.name
  namespace        = var.namespace
  create_namespace = true
  chart            = var.chart_path
  values           = [module.values.values_yaml, yamlencode(var.extra_values)]
  wait             = true
  timeout          = 600

  depends_on = [aws_iam_role_policy.floe, aws_s3_bucket_policy.tls_only]
}
