"""The SQS engine (``sqs://``): SQS for delivery, optionally DynamoDB for job state and S3
for large payloads. See :mod:`conveyor.engines.sqs.engine` and docs/aws.md."""

from conveyor.engines.sqs.aws import RequestStats
from conveyor.engines.sqs.engine import SQSEngine
from conveyor.engines.sqs.options import SQSOptions
from conveyor.engines.sqs.untracked import StateTableRequired

__all__ = ["RequestStats", "SQSEngine", "SQSOptions", "StateTableRequired"]
