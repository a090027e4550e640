# An example root module: Floe on an existing EKS cluster, with a bucket
# per zone, R=3 W=2 and the chart's bundled etcd. Not validated where it
# was written (no provider could be downloaded); see docs/deploy.md.

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

variable "cluster_name" {
  description = "The EKS cluster to install into."
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

provider "aws" {
  region = var.region
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_eks_cluster_auth" "this" {
  name = var.cluster_name
}

data "aws_iam_openid_connect_provider" "this" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

provider "helm" {
  kubernetes {
    host                   = data.aws_eks_cluster.this.endpoint
    cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
    token                  = data.aws_eks_cluster_auth.this.token
  }
}

module "floe" {
  source = "../../modules/aws"

  name              = "floe"
  region            = var.region
  zones             = var.zones
  bucket_prefix     = var.bucket_prefix
  oidc_provider_arn = data.aws_iam_openid_connect_provider.this.arn
  oidc_provider     = replace(data.aws_iam_openid_connect_provider.this.url, "https://", "")
}

output "bootstrap" {
  value = module.floe.bootstrap
}
