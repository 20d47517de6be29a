variable "region" {
  description = "Meridian's name for the region (us-east, eu-west, in-south): the one in regions/<region>.toml."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.region))
    error_message = "region: lowercase letters, digits and dashes, as Meridian names regions (e.g. us-east)."
  }
}

variable "retention_days" {
  description = "How long every PHI object version is kept, unchangeable by anyone (S3 Object Lock, compliance mode): the longest retention any contract of the region names."
  type        = number
  validation {
    condition     = var.retention_days >= 1 && var.retention_days <= 36500
    error_message = "retention_days: between 1 and 36500."
  }
}

variable "namespace" {
  description = "The Kubernetes namespace of the region's Helm release."
  type        = string
}

variable "release" {
  description = "The Helm release's name (service accounts are <release>-<service>)."
  type        = string
}

variable "oidc_provider_arn" {
  description = "The EKS cluster's OIDC provider (IRSA)."
  type        = string
}

variable "oidc_provider_url" {
  description = "The EKS cluster's OIDC issuer, without https://."
  type        = string
}

variable "admin_role_arns" {
  description = "Roles besides the services' that may manage the PHI bucket (break-glass; never read objects through the services' paths)."
  type        = list(string)
  default     = []
}

variable "kafka" {
  description = "The region's MSK cluster: made here (subnets, security groups) unless existing_bootstrap names one already running."
  type = object({
    existing_bootstrap = optional(string)
    existing_arn       = optional(string)
    subnet_ids         = optional(list(string), [])
    security_group_ids = optional(list(string), [])
    instance_type      = optional(string, "kafka.m7g.large")
    volume_gb          = optional(number, 1000)
  })
  validation {
    condition     = var.kafka.existing_bootstrap != null || length(var.kafka.subnet_ids) >= 3
    error_message = "kafka: name an existing cluster (existing_bootstrap, existing_arn) or three subnets, one per zone, to make one."
  }
}

variable "derivative_destinations" {
  description = "Buckets of other regions that de-identified derivatives of this region's studies may be written to (a contract's destinations): storage may put under deid/ there, nothing else."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}

variable "derivative_writer_role_arns" {
  description = "Other regions' storage roles whose contracts name this region as a destination: they may put de-identified derivatives under deid/ of this bucket, nothing else."
  type        = list(string)
  default     = []
}
