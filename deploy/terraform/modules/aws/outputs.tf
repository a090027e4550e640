output "buckets" {
  value = module.values.buckets
}

output "role_arn" {
  value = aws_iam_role.floe.arn
}

output "bootstrap" {
  description = "Where clients in the cluster bootstrap."
  value       = "${var.name}-proxy.${var.namespace}.svc:9092"
}
