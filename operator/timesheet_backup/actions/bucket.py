"""The operator's own access to a bucket: opening it, deleting a backup's objects (manifests
are read with `storage.manifest.read`, as the agent reads them).

Credentials come from the same Secret the Jobs use (read with the operator's RBAC), or from
the operator pod's cloud identity when the storage names no Secret; deletes use
storage.deleteCredentialsSecretRef when it is set (docs/security.md, "Writers that cannot
delete")."""

from __future__ import annotations

from collections.abc import Sequence

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


def delete_many_backups(store: S3Store, manifest_keys: Sequence[str], *,
                        all_versions: Sequence[str] = ()) -> dict[str, str]:
    """Delete the objects of several backups of one bucket in few requests: one listing per
    backup directory, then DeleteObjects of up to 1,000 keys each -- every manifest first
    (the commit markers, as in `delete_backup_objects`), then the rest of the backups whose
    manifest went. `all_versions`: the manifest keys of backups in an Object Lock bucket
    (every version and delete marker goes). Returns {manifest key: why} for the backups
    whose objects could not all be deleted (their Backups must stay, to say so and be
    retried); a failed listing or request raises StorageError."""
    listed: dict[str, list[dict[str, str]]] = {}
    for manifest_key in manifest_keys:
        directory = dir_of_manifest(manifest_key)
        if manifest_key in all_versions:
            listed[manifest_key] = [
                {"Key": v.key} if v.version_id == "null"
                else {"Key": v.key, "VersionId": v.version_id}
                for v in store.list_versions(directory)]
        else:
            listed[manifest_key] = [{"Key": o.key} for o in store.list_objects(directory)]

    def label(obj: dict[str, str]) -> str:
        return obj["Key"] + (f" (version {obj['VersionId']})" if obj.get("VersionId") else "")

    failed: dict[str, str] = {}
    manifests = [o for key, objs in listed.items() for o in objs if o["Key"] == key]
    refused = store.delete_each(manifests)
    for key, objs in listed.items():
        why = [f"{label(o)}: {refused[label(o)]}" for o in objs if label(o) in refused]
        if why:
            failed[key] = f"could not delete s3://{store.bucket}/{why[0]}"
    # A backup whose manifest stayed keeps its artifacts too: it stays whole and restorable.
    rest = [o for key, objs in listed.items() if key not in failed
            for o in objs if o["Key"] != key]
    refused = store.delete_each(rest)
    for key, objs in listed.items():
        why = [f"{label(o)}: {refused[label(o)]}" for o in objs
               if o["Key"] != key and label(o) in refused]
        if why and key not in failed:
            failed[key] = f"could not delete s3://{store.bucket}/{why[0]}" + (
                f" (and {len(why) - 1} more)" if len(why) > 1 else "")
    return failed


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
