# A role per service (IRSA: the service account <release>-<service> in the
# release's namespace assumes it), each allowed only what its service does.
# Kafka topics are meridian.<region>.<class>.<stream>; MSK's IAM actions
# name them. The replicator (regions end to end) reads operational topics
# and never a .phi. one.

locals {
  services = ["ingest", "storage", "routing", "reporting", "billing", "inference", "replicator"]
  ops      = "${local.kafka_topic}/meridian.${var.region}.ops.*"
  phi      = "${local.kafka_topic}/meridian.${var.region}.phi.*"
  groups   = "${local.kafka_group}/meridian.${var.region}.*"
  txns     = "${local.kafka_txn}/meridian.${var.region}.*"
  bucket   = aws_s3_bucket.phi.arn

  kafka_connect = {
    Sid      = "KafkaConnect"
    Effect   = "Allow"
    Action   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"]
    Resource = [local.kafka_arn]
  }
  # Every service but the replicator reads and writes the region's topics,
  # both classes (what each writes is fixed by its code; a topic's class
  # says where its data may go, and every service here is in the region).
  kafka_region = [
    local.kafka_connect,
    {
      Sid      = "RegionTopics"
      Effect   = "Allow"
      Action   = ["kafka-cluster:DescribeTopic", "kafka-cluster:CreateTopic", "kafka-cluster:ReadData", "kafka-cluster:WriteData"]
      Resource = [local.ops, local.phi]
    },
    {
      Sid      = "ConsumerGroupsAndTransactions"
      Effect   = "Allow"
      Action   = ["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup", "kafka-cluster:AlterTransactionalId", "kafka-cluster:DescribeTransactionalId"]
      Resource = [local.groups, local.txns]
    },
  ]
  kms_use = {
    Sid      = "RegionalKey"
    Effect   = "Allow"
    Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
    Resource = [aws_kms_key.phi.arn]
  }

  statements = {
    # Writes objects and the data keys, reads them back, sweeps objects no
    # event names (within Object Lock: a delete adds a marker).
    ingest = concat(local.kafka_region, [local.kms_use, {
      Sid      = "PhiObjects"
      Effect   = "Allow"
      Action   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
      Resource = ["${local.bucket}/phi/*", "${local.bucket}/keys/v1/*"]
      }, {
      Sid       = "ListPhi"
      Effect    = "Allow"
      Action    = ["s3:ListBucket"]
      Resource  = [local.bucket]
      Condition = { StringLike = { "s3:prefix" = ["phi/*", "keys/v1/*"] } }
    }])
    # Reads objects and keys (DICOMweb, derivatives); writes derivatives
    # under deid/ of the destination regions' buckets only.
    storage = concat(local.kafka_region, [local.kms_use, {
      Sid      = "ReadPhi"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:ListBucket"]
      Resource = [local.bucket, "${local.bucket}/phi/*", "${local.bucket}/keys/v1/*"]
      }], [for destinations in [var.derivative_destinations] : {
      Sid      = "WriteDerivativesAbroad"
      Effect   = "Allow"
      Action   = ["s3:PutObject"]
      Resource = [for b in destinations : "${b}/deid/*"]
    } if length(destinations) > 0])
    routing = local.kafka_region
    billing = local.kafka_region
    reporting = concat(local.kafka_region, [local.kms_use, {
      Sid      = "ReadKeys"
      Effect   = "Allow"
      Action   = ["s3:GetObject"]
      Resource = ["${local.bucket}/keys/v1/*"]
    }])
    # Reads a study's objects to run its models.
    inference = concat(local.kafka_region, [local.kms_use, {
      Sid      = "ReadPhi"
      Effect   = "Allow"
      Action   = ["s3:GetObject"]
      Resource = ["${local.bucket}/phi/*", "${local.bucket}/keys/v1/*"]
    }])
    # Operational topics only: what leaves a region carries no PHI.
    replicator = [
      local.kafka_connect,
      {
        Sid      = "OperationalTopicsOnly"
        Effect   = "Allow"
        Action   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
        Resource = [local.ops]
      },
      {
        Sid      = "ItsConsumerGroup"
        Effect   = "Allow"
        Action   = ["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"]
        Resource = ["${local.kafka_group}/meridian.${var.region}.replicator*"]
      },
    ]
  }
}

resource "aws_iam_role" "service" {
  for_each = toset(local.services)
  name     = "${local.name}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = var.oidc_provider_arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${var.oidc_provider_url}:sub" = "system:serviceaccount:${var.namespace}:${var.release}-${each.key}"
          "${var.oidc_provider_url}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy" "service" {
  for_each = toset(local.services)
  name     = "${local.name}-${each.key}"
  role     = aws_iam_role.service[each.key].id
  policy   = jsonencode({ Version = "2012-10-17", Statement = local.statements[each.key] })
}
