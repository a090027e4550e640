output "values" {
  description = "The chart's values, as an object."
  value       = local.values
}

output "values_yaml" {
  description = "The chart's values as YAML (for helm_release)."
  value       = yamlencode(local.values)
}

output "buckets" {
  description = "Zone => bucket name."
  value       = local.buckets
}

output "bucket_names" {
  description = "The distinct buckets to create."
  value       = distinct(values(local.buckets))
}

output "object_prefix" {
  value = local.prefix
}

output "policy_json" {
  description = "The least-privilege IAM policy of Floe's pods."
  value       = jsonencode(local.policy)
}
