# One Meridian region's infrastructure: its PHI bucket, pinned to this AWS
# region and locked; its keys; its Kafka cluster (kafka.tf); a least-
# privilege role per service (iam.tf). The provider's region is the
# region's: nothing here is made anywhere else.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  writers_from_elsewhere = var.derivative_writer_role_arns
  name                   = "meridian-${var.region}"
  account                = data.aws_caller_identity.current.account_id
  tags                   = merge(var.tags, { "meridian:region" = var.region, "meridian:data" = "phi" })
}

# The regional key: the bucket's objects, the cluster's storage, the logs.
resource "aws_kms_key" "phi" {
  description             = "${local.name}: PHI at rest (objects, the log's storage), this region only"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  multi_region            = false
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${local.account}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncrypt"
        Effect    = "Allow"
        Principal = { Service = "logs.${data.aws_region.current.name}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
      },
    ]
  })
  tags = local.tags
}

resource "aws_kms_alias" "phi" {
  name          = "alias/${local.name}-phi"
  target_key_id = aws_kms_key.phi.key_id
}

# The key-encryption key of the region's key store (data keys are kept in
# the bucket under keys/v1, wrapped by it). Its value is put out of band
# (docs/deploy.md) so it is never in Terraform's state; the pods get it as
# the secrets directory's file "key-encryption-key".
resource "aws_secretsmanager_secret" "key_encryption_key" {
  #checkov:skip=CKV2_AWS_57:rotating the key-encryption key means re-wrapping every data key in the bucket, which the key store does not do yet (docs/deploy.md)
  name                    = "${local.name}/key-encryption-key"
  description             = "Meridian ${var.region}: wraps the data keys of the region's studies (crypto-shredding)"
  kms_key_id              = aws_kms_key.phi.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_s3_bucket" "phi" {
  #checkov:skip=CKV_AWS_144:cross-region replication would copy PHI out of its region: residency forbids it; durability comes from S3's zones within the region
  #checkov:skip=CKV_AWS_18:every read of PHI through Meridian is audited on its log (PhiAccessed); S3 data events belong to the account's CloudTrail baseline, which this module does not own
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket notifications: Meridian's events are on its log
  bucket              = "${local.name}-phi"
  object_lock_enabled = true
  force_destroy       = false
  tags                = local.tags
}

resource "aws_s3_bucket_ownership_controls" "phi" {
  bucket = aws_s3_bucket.phi.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "phi" {
  bucket                  = aws_s3_bucket.phi.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "phi" {
  bucket = aws_s3_bucket.phi.id
  versioning_configuration {
    status = "Enabled"
  }
}

# No version of a PHI object can be deleted or overwritten before its
# retention ends, by anyone, root included. Crypto-shredding (a study's
# data key destroyed) is how a study is made unreadable inside it.
resource "aws_s3_bucket_object_lock_configuration" "phi" {
  bucket = aws_s3_bucket.phi.id
  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.retention_days
    }
  }
  depends_on = [aws_s3_bucket_versioning.phi]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "phi" {
  bucket = aws_s3_bucket.phi.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.phi.arn
    }
    bucket_key_enabled = true
  }
}

# Who may touch the bucket at all: the region's service roles (each further
# limited by its own policy, iam.tf) and the named administrators; over TLS
# only; every object under the regional key.
resource "aws_s3_bucket_policy" "phi" {
  bucket = aws_s3_bucket.phi.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid       = "DenyEveryoneButTheRegionsServices"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.phi.arn, "${aws_s3_bucket.phi.arn}/*"]
        Condition = {
          ArnNotLike = {
            "aws:PrincipalArn" = concat([for r in aws_iam_role.service : r.arn], var.admin_role_arns, local.writers_from_elsewhere)
          }
        }
      },
      {
        Sid       = "DenyPlainHttp"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.phi.arn, "${aws_s3_bucket.phi.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyOtherKeys"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = "${aws_s3_bucket.phi.arn}/*"
        Condition = {
          StringNotEqualsIfExists = { "s3:x-amz-server-side-encryption-aws-kms-key-id" = aws_kms_key.phi.arn }
        }
      },
      ], [for statement in [
        {
          Sid       = "OtherRegionsPutDerivativesUnderDeidOnly"
          Effect    = "Deny"
          Principal = "*"
          NotAction = "s3:PutObject"
          Resource  = [aws_s3_bucket.phi.arn, "${aws_s3_bucket.phi.arn}/*"]
          Condition = { ArnLike = { "aws:PrincipalArn" = local.writers_from_elsewhere } }
        },
        {
          Sid         = "OtherRegionsWriteNowhereElse"
          Effect      = "Deny"
          Principal   = "*"
          Action      = "s3:PutObject"
          NotResource = "${aws_s3_bucket.phi.arn}/deid/*"
          Condition   = { ArnLike = { "aws:PrincipalArn" = local.writers_from_elsewhere } }
        },
    ] : statement if length(local.writers_from_elsewhere) > 0])
  })
  depends_on = [aws_s3_bucket_public_access_block.phi]
}

# Objects no longer current (a retention ended, an object replaced) leave
# once their lock allows; uploads never finished are cleared.
resource "aws_s3_bucket_lifecycle_configuration" "phi" {
  bucket = aws_s3_bucket.phi.id
  rule {
    id     = "noncurrent-after-retention"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.retention_days + 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
  depends_on = [aws_s3_bucket_versioning.phi]
}
