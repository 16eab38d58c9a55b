"""`python -m bench.s3cp FILE s3://BUCKET/KEY`: the guide's `aws s3 cp`, done with boto3.

awscli is not a dependency of this project (and not installable everywhere); `aws s3 cp` is
boto3's s3transfer underneath, and `upload_file` with its default TransferConfig is the same
code path: 8 MiB parts, 10 threads. Endpoint and credentials come from the environment
(`S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`).
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.config import Config


def main(argv: list[str]) -> int:
    src, dest = argv
    bucket, _, key = dest.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"],
                          region_name=os.environ.get("AWS_REGION", "us-east-1"),
                          config=Config(s3={"addressing_style": "path"}))
    client.upload_file(src, bucket, key)
    print(f"upload: {src} to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
