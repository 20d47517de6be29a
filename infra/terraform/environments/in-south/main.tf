# Meridian's in-south region, in AWS ap-south-1: its own state, its own provider
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
    key          = "regions/in-south.tfstate"
    region       = "ap-south-1"
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region              = "ap-south-1"
  allowed_account_ids = [var.account_id]
  default_tags {
    tags = { "meridian:region" = "in-south", "meridian:managed-by" = "terraform" }
  }
}

variable "account_id" {
  description = "The AWS account Meridian's in-south region lives in."
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

  region = "in-south"
  # Seven years: the longest retention any contract of the region names.
  retention_days    = 2555
  namespace         = "meridian-in-south"
  release           = "meridian-in-south"
  oidc_provider_arn = var.eks_oidc_provider_arn
  oidc_provider_url = var.eks_oidc_provider_url
  kafka = {
    subnet_ids         = var.kafka_subnet_ids
    security_group_ids = var.kafka_security_group_ids
  }
  # eu-west's storage puts de-identified derivatives under deid/ here.
  derivative_writer_role_arns = ["arn:aws:iam::${var.account_id}:role/meridian-eu-west-storage"]
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
