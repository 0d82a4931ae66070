"""secrets-agent: delivers secrets from AWS SSM, AWS Secrets Manager and Vault to files."""

__version__ = "0.1.0"
