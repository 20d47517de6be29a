# The region's log: an MSK cluster in this AWS region (or one already
# running), TLS between clients and brokers and between brokers, storage
# under the regional key, broker logs kept for a year.

locals {
  make_kafka = var.kafka.existing_bootstrap == null
  kafka_arn  = local.make_kafka ? aws_msk_cluster.log[0].arn : var.kafka.existing_arn
  # MSK's IAM resources: topic/<cluster>/<uuid>/<topic> and alike.
  kafka_topic = replace(local.kafka_arn, ":cluster/", ":topic/")
  kafka_group = replace(local.kafka_arn, ":cluster/", ":group/")
  kafka_txn   = replace(local.kafka_arn, ":cluster/", ":transactional-id/")
}

resource "aws_cloudwatch_log_group" "kafka" {
  count             = local.make_kafka ? 1 : 0
  name              = "/meridian/${var.region}/kafka"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.phi.arn
  tags              = local.tags
}

resource "aws_msk_cluster" "log" {
  count                  = local.make_kafka ? 1 : 0
  cluster_name           = local.name
  kafka_version          = "3.7.x"
  number_of_broker_nodes = 3
  enhanced_monitoring    = "PER_TOPIC_PER_BROKER"

  broker_node_group_info {
    instance_type   = var.kafka.instance_type
    client_subnets  = var.kafka.subnet_ids
    security_groups = var.kafka.security_group_ids
    storage_info {
      ebs_storage_info {
        volume_size = var.kafka.volume_gb
      }
    }
    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.phi.arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  # IAM (the topic policies of iam.tf bind) and SCRAM (what Meridian's
  # Kafka client speaks today: docs/deploy.md says what that leaves open).
  client_authentication {
    unauthenticated = false
    sasl {
      iam   = true
      scram = true
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.kafka[0].name
      }
    }
  }

  tags = local.tags
}
