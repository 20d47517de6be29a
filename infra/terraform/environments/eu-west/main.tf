# Meridian's eu-west region, in AWS eu-west-1: its own state, its own provider
# region; nothing of it is made anywhere else.
terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
  backend "s3" {
    bucket       = "meridian-terraform-state"
    key          = "regions/eu-west.tfstate"
    region       = "eu-west-1"
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region              = "eu-west-1"
  allowed_account_ids = [var.account_id]
  default_tags {
    tags = { "meridian:region" = "eu-west", "meridian:managed-by" = "terraform" }
  }
}

variable "account_id" {
  description = "The AWS account Meridian's eu-west region lives in."
  type        = string
}

variable "eks_oidc_provider_arn" {
  description = "The region's EKS cluster's OIDC provider."
  type        = string
}

variable "eks_oidc_provider_url" {
  description = "Its issuer, without https://."
  type        = string
}

variable "kafka_subnet_ids" {
  description = "Three private subnets, one per zone, for the brokers."
  type        = list(string)
}

variable "kafka_security_group_ids" {
  description = "Security groups admitting the cluster's nodes to the brokers on 9096 and 9098."
  type        = list(string)
}

module "region" {
  source = "../../modules/region"

  region = "eu-west"
  # Seven years: the longest retention any contract of the region names.
  retention_days    = 2555
  namespace         = "meridian-eu-west"
  release           = "meridian-eu-west"
  oidc_provider_arn = var.eks_oidc_provider_arn
  oidc_provider_url = var.eks_oidc_provider_url
  kafka = {
    subnet_ids         = var.kafka_subnet_ids
    security_group_ids = var.kafka_security_group_ids
  }
  # Northwind's contract with Lotus derives de-identified copies into in-south.
  derivative_destinations = ["arn:aws:s3:::meridian-in-south-phi"]
}

output "bucket" {
  value = module.region.bucket
}

output "kafka_bootstrap" {
  value = module.region.kafka_bootstrap_scram
}

output "service_role_arns" {
  value = module.region.service_role_arns
}
