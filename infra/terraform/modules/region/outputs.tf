output "bucket" {
  description = "The PHI bucket: regions/<region>.toml's [objects] bucket."
  value       = aws_s3_bucket.phi.bucket
}

output "kafka_bootstrap_scram" {
  description = "The brokers for SASL/SCRAM over TLS: regions/<region>.toml's [log] bootstrap_servers."
  value       = local.make_kafka ? aws_msk_cluster.log[0].bootstrap_brokers_sasl_scram : var.kafka.existing_bootstrap
}

output "service_role_arns" {
  description = "Each service's role: the Helm values' services.<service>.serviceAccount annotation eks.amazonaws.com/role-arn."
  value       = { for k, r in aws_iam_role.service : k => r.arn }
}

output "key_encryption_key_secret" {
  description = "The Secrets Manager secret holding the key-encryption key (its value is put out of band)."
  value       = aws_secretsmanager_secret.key_encryption_key.arn
}
