"""The operator's own access to a bucket: opening it, deleting a backup's objects (manifests
are read with `storage.manifest.read`, as the agent reads them).

Credentials come from the same Secret the Jobs use (read with the operator's RBAC), or from
the operator pod's cloud identity when the storage names no Secret; deletes use
storage.deleteCredentialsSecretRef when it is set (docs/security.md, "Writers that cannot
delete")."""

from __future__ import annotations

from botocore.exceptions import ClientError

from timesheet_backup import kube
from timesheet_backup.api import models
from timesheet_backup.storage.layout import dir_of_manifest
from timesheet_backup.storage.s3 import Credentials, S3Settings, S3Store, ca_bundle_file


def open_store(storage: models.StorageSpec, namespace: str, *, deleting: bool = False
               ) -> S3Store:
    """`deleting`: with storage.deleteCredentialsSecretRef when set -- the only key that may
    delete, which no Job ever gets -- else with the same credentials as for reading.
    Raises LookupError for a missing Secret, StorageError for a bad bucket setting,
    ConfigError for a CA bundle without a certificate."""
    creds = None
    ref = storage.credentials_secret_ref
    if deleting and storage.delete_credentials_secret_ref is not None:
        ref = storage.delete_credentials_secret_ref
    if ref is not None:
        creds = Credentials(
            access_key_id=kube.read_secret_key(namespace, ref.name, ref.access_key_id_key),
            secret_access_key=kube.read_secret_key(namespace, ref.name,
                                                   ref.secret_access_key_key),
            session_token=(kube.read_secret_key(namespace, ref.name, ref.session_token_key)
                           if ref.session_token_key else None),
        )
    # The same CA as the Jobs trust (a file, since botocore takes a path).
    ca = storage.ca_bundle_secret_ref
    settings = S3Settings(
        bucket=storage.bucket or "",
        prefix=storage.prefix or "",
        region=storage.region,
        endpoint=storage.endpoint,
        force_path_style=bool(storage.force_path_style),
        max_attempts=3,
        ca_bundle=(ca_bundle_file(kube.read_secret_key(namespace, ca.name, ca.key))
                   if ca is not None else None),
        verify_tls=not (ca is None and storage.insecure_skip_tls_verify),
    )
    return S3Store(settings, credentials=creds)


def delete_backup_objects(store: S3Store, manifest_key: str, *, all_versions: bool = False
                          ) -> int:
    """Delete every object in the backup's directory. The manifest goes first: it is the
    commit marker, so an interrupted delete leaves unreferenced leftovers (removed by the
    retry, which lists the directory) but never a manifest naming missing artifacts.
    `all_versions` (an Object Lock bucket, versioned): every version and delete marker, so
    nothing stays hidden and billed behind a delete marker.
    Returns how many objects (or versions) were deleted."""
    directory = dir_of_manifest(manifest_key)
    if all_versions:
        versions = store.list_versions(directory)
        first = [v for v in versions if v.key == manifest_key and not v.delete_marker]
        if first:
            store.delete_versions(first)
        others = [v for v in versions if v not in first]
        if others:
            store.delete_versions(others)
        return len(versions)
    keys = [o.key for o in store.list_objects(directory)]
    if manifest_key in keys:
        store.delete([manifest_key])
    rest = [k for k in keys if k != manifest_key]
    if rest:
        store.delete(rest)
    return len(keys)


def abort_incomplete_uploads(store: S3Store, manifest_key: str) -> list[str]:
    """Abort the multipart uploads left open in the backup's directory; returns their keys.

    An agent that is killed (SIGKILL, a lost node) cannot abort its upload, and S3 keeps the
    parts, invisible and billed, until a lifecycle rule removes them. Called once the backup's
    Job has ended, when no agent of this backup can still be uploading."""
    directory = dir_of_manifest(manifest_key)
    aborted = []
    for key, upload_id in store.list_multipart_uploads(directory):
        try:
            store.client.abort_multipart_upload(Bucket=store.bucket, Key=key,
                                                UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
        aborted.append(key)
    return aborted
