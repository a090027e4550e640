# terraform test: the values and policy the module derives from its inputs.

variables {
  name          = "prod"
  region        = "eu-west-1"
  zones         = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  bucket_prefix = "acme-floe"
  role_arn      = "arn:aws:iam::123456789012:role/floe-prod"
  admin_secret  = "floe-admin"
}

run "a_bucket_per_zone_and_irsa" {
  command = apply

  assert {
    condition     = output.bucket_names == tolist(["acme-floe-eu-west-1a", "acme-floe-eu-west-1b", "acme-floe-eu-west-1c"])
    error_message = "one bucket per zone: ${jsonencode(output.bucket_names)}"
  }
  assert {
    condition     = output.values.storage.targets[1].url == "s3://acme-floe-eu-west-1b/floe?region=eu-west-1"
    error_message = "target url: ${output.values.storage.targets[1].url}"
  }
  assert {
    condition     = output.values.storage.targets[2].zone == "eu-west-1c"
    error_message = "each target carries its zone"
  }
  assert {
    condition     = output.values.storage.replicas == 3 && output.values.storage.writeQuorum == 2
    error_message = "R=3, W=2 by default"
  }
  assert {
    condition     = output.values.serviceAccount.annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/floe-prod"
    error_message = "the role annotation for IRSA"
  }
  assert {
    condition     = output.values.etcd.bundled.enabled
    error_message = "no endpoints: the bundled etcd"
  }
  assert {
    condition     = jsondecode(output.policy_json).Statement[1].Resource[0] == "arn:aws:s3:::acme-floe-eu-west-1a/floe/*"
    error_message = "object access limited to the prefix"
  }
  assert {
    condition     = length(jsondecode(output.policy_json).Statement) == 2
    error_message = "list and object statements only"
  }
  assert {
    condition     = yamldecode(output.values_yaml).admin.existingSecret == "floe-admin"
    error_message = "values_yaml is the same values"
  }
}

run "one_bucket_for_every_zone_and_external_etcd" {
  command = apply

  variables {
    bucket_per_zone = false
    bucket_prefix   = "acme-floe"
    object_prefix   = "/clusters/prod/"
    etcd_endpoints  = ["http://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"]
    role_arn        = ""
  }

  assert {
    condition     = output.bucket_names == tolist(["acme-floe"])
    error_message = "one bucket"
  }
  assert {
    condition     = output.values.storage.targets[0].url == "s3://acme-floe/clusters/prod/eu-west-1a?region=eu-west-1"
    error_message = "zones apart by prefix: ${output.values.storage.targets[0].url}"
  }
  assert {
    condition     = output.values.etcd.endpoints[1] == "http://etcd-1.etcd:2379" && !output.values.etcd.bundled.enabled
    error_message = "external etcd"
  }
  assert {
    condition     = length(output.values.serviceAccount.annotations) == 0
    error_message = "no role: no annotation"
  }
}

run "a_write_quorum_above_replicas_is_refused" {
  command = plan

  variables {
    replicas     = 2
    write_quorum = 3
  }

  expect_failures = [var.write_quorum]
}

run "more_replicas_than_zones_is_refused" {
  command = plan

  variables {
    zones        = ["eu-west-1a"]
    replicas     = 3
    write_quorum = 1
  }

  expect_failures = [var.replicas]
}
