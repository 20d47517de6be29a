# The region module under a mocked AWS provider (offline): the PHI bucket
# is locked (Object Lock, compliance mode), encrypted under the region's
# key, closed to all but the region's roles and to plain HTTP; and the
# replicator's role can never read a .phi. topic.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "111122223333" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_resource "aws_msk_cluster" {
    defaults = { arn = "arn:aws:kafka:us-east-1:111122223333:cluster/meridian-us-east/6a2b-7c" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::meridian-us-east-phi" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::111122223333:role/meridian-us-east-service" }
  }
}

variables {
  region            = "us-east"
  retention_days    = 2555
  namespace         = "meridian-us-east"
  release           = "meridian-us-east"
  oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
  oidc_provider_url = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
  kafka = {
    subnet_ids         = ["subnet-a", "subnet-b", "subnet-c"]
    security_group_ids = ["sg-kafka"]
  }
  derivative_destinations = ["arn:aws:s3:::meridian-in-south-phi"]
}

run "the_phi_bucket_is_locked_encrypted_and_closed" {
  command = apply

  assert {
    condition     = aws_s3_bucket.phi.object_lock_enabled
    error_message = "the PHI bucket has Object Lock"
  }
  assert {
    condition     = aws_s3_bucket_object_lock_configuration.phi.rule[0].default_retention[0].mode == "COMPLIANCE" && aws_s3_bucket_object_lock_configuration.phi.rule[0].default_retention[0].days == 2555
    error_message = "Object Lock in compliance mode for the retention"
  }
  assert {
    condition     = aws_s3_bucket_versioning.phi.versioning_configuration[0].status == "Enabled"
    error_message = "versioning on"
  }
  assert {
    condition = alltrue([for r in aws_s3_bucket_server_side_encryption_configuration.phi.rule :
    r.apply_server_side_encryption_by_default[0].sse_algorithm == "aws:kms" && r.apply_server_side_encryption_by_default[0].kms_master_key_id == aws_kms_key.phi.arn])
    error_message = "every object under the region's KMS key"
  }
  assert {
    condition     = aws_kms_key.phi.enable_key_rotation && !aws_kms_key.phi.multi_region
    error_message = "a regional key, rotated"
  }
  assert {
    condition = alltrue([aws_s3_bucket_public_access_block.phi.block_public_acls, aws_s3_bucket_public_access_block.phi.block_public_policy,
    aws_s3_bucket_public_access_block.phi.ignore_public_acls, aws_s3_bucket_public_access_block.phi.restrict_public_buckets])
    error_message = "public access blocked"
  }
  assert {
    condition = anytrue([for s in jsondecode(aws_s3_bucket_policy.phi.policy).Statement :
      s.Effect == "Deny" && s.Principal == "*" && s.Action == "s3:*" &&
    try(length(s.Condition.ArnNotLike["aws:PrincipalArn"]), 0) == 7])
    error_message = "the bucket denies every principal but the region's seven service roles"
  }
  assert {
    condition = anytrue([for s in jsondecode(aws_s3_bucket_policy.phi.policy).Statement :
    s.Effect == "Deny" && try(s.Condition.Bool["aws:SecureTransport"], "") == "false"])
    error_message = "the bucket refuses plain HTTP"
  }
  assert {
    condition     = aws_msk_cluster.log[0].encryption_info[0].encryption_in_transit[0].client_broker == "TLS" && aws_msk_cluster.log[0].encryption_info[0].encryption_at_rest_kms_key_arn == aws_kms_key.phi.arn
    error_message = "the log: TLS, and at rest under the region's key"
  }
}

run "the_replicator_never_reads_a_phi_topic" {
  command = apply

  assert {
    condition     = !strcontains(aws_iam_role_policy.service["replicator"].policy, ".phi.")
    error_message = "no grant of a .phi. topic to the replicator"
  }
  assert {
    condition     = strcontains(aws_iam_role_policy.service["replicator"].policy, "topic/meridian-us-east/6a2b-7c/meridian.us-east.ops.*")
    error_message = "the replicator reads the region's operational topics"
  }
  assert {
    condition     = !strcontains(aws_iam_role_policy.service["replicator"].policy, "s3:")
    error_message = "the replicator touches no object"
  }
  assert {
    condition     = strcontains(aws_iam_role_policy.service["storage"].policy, "arn:aws:s3:::meridian-in-south-phi/deid/*") && !strcontains(aws_iam_role_policy.service["storage"].policy, "meridian-in-south-phi/phi/")
    error_message = "storage writes derivatives abroad under deid/ only"
  }
  assert {
    condition     = !strcontains(aws_iam_role_policy.service["routing"].policy, "s3:")
    error_message = "routing touches no object"
  }
  assert {
    condition     = jsondecode(aws_iam_role.service["ingest"].assume_role_policy).Statement[0].Condition.StringEquals["oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE:sub"] == "system:serviceaccount:meridian-us-east:meridian-us-east-ingest"
    error_message = "ingest's role is assumed by ingest's service account only"
  }
}

run "a_region_name_meridian_does_not_use_is_refused" {
  command = plan
  variables {
    region = "US East"
  }
  expect_failures = [var.region]
}
