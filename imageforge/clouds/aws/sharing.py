"""AWS sharing: a LaunchPermission on each AMI, and createVolumePermission on its snapshots
only when the policy asks for it (`snapshots: true`): launching an AMI does not need it, and
it lets whoever holds it copy the whole disk.

Publish covers every AMI of a build: the one(s) it recorded at build time and the region copies
made after verification (record.copies), each with its snapshots.

What publish added is kept per region as the permissions it added ({region: [permission]});
a snapshot's permission carries its "Snapshot" id. Unpublish removes exactly those and leaves
what someone else granted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imageforge.clouds.aws.client import ec2
from imageforge.clouds.common import Outcome, Published, added_before, merge_added
from imageforge.clouds.sdkerrors import errors_into, why
from imageforge.config.publishpolicy import Sharing
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.records.record import BuildRecord

Permission = dict[str, str]
NOT_OFFERED = ("InvalidAction", "NotImplemented", "UnsupportedOperation")


PLACE = "aws"


class AwsSharing:
    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        wanted = permissions(sharing)
        outcomes, new = [], {}
        for region, ami in sorted(amis(record).items()):
            outcome = Outcome(region, ami)
            outcomes.append(outcome)
            with errors_into(outcome):
                image = AmiSharing(region, ami)
                before = image.launch_permissions()
                outcome.changes, volumes = image.share(wanted, sharing.public, sharing.snapshots)
                new[region] = [p for p in wanted if p not in before] + volumes
        return Published(outcomes, merge_added(added_before(record, PLACE), new))

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        added = added_before(record, PLACE)
        outcomes = []
        for region, ami in sorted(amis(record).items()):
            outcome = Outcome(region, ami)
            outcomes.append(outcome)
            with errors_into(outcome):
                outcome.changes = AmiSharing(region, ami).unshare(added.get(region, []))
                added.pop(region, None)
        return Published(outcomes, added)

    def tag(self, project: Project, record: BuildRecord, key: str, value: str) -> list[Outcome]:
        """Tag every AMI of the build key=value (the provenance envelope's sha256)."""
        outcomes = []
        for region, ami in sorted(amis(record).items()):
            outcome = Outcome(region, ami)
            outcomes.append(outcome)
            with errors_into(outcome):
                client = ec2(region)
                ours = [{"Name": "resource-id", "Values": [ami]}, {"Name": "key", "Values": [key]}]
                if [t["Value"] for t in client.describe_tags(Filters=ours)["Tags"]] != [value]:
                    client.create_tags(Resources=[ami], Tags=[{"Key": key, "Value": value}])
                    outcome.changes = [f"tagged {key}={value}"]
        return outcomes


def amis(record: BuildRecord) -> dict[str, str]:
    """Every AMI of a build by region: built, then copied after verification."""
    return {**record.artifact_ids, **record.copies}


def permissions(sharing: Sharing) -> list[Permission]:
    if sharing.public:
        return [{"Group": "all"}]
    return [{"UserId": a} for a in sharing.accounts] + [
        {"OrganizationArn" if ":organization/" in o else "OrganizationalUnitArn": o}
        for o in sharing.organizations
    ]


def snapshot_args(permission: Permission) -> dict[str, list[str]] | None:
    """Snapshots share with accounts or everyone; organizations reach them through the AMI."""
    if "Group" in permission:
        return {"GroupNames": [permission["Group"]]}
    if "UserId" in permission:
        return {"UserIds": [permission["UserId"]]}
    return None


def describe(permission: Permission) -> str:
    key, value = next((k, v) for k, v in permission.items() if k != "Snapshot")
    return "everyone" if value == "all" and key == "Group" else f"{key} {value}"


class AmiSharing:
    """publish/unpublish for one AMI in one region."""

    def __init__(self, region: str, ami: str) -> None:
        self.region, self.ami, self.client = region, ami, ec2(region)

    def describe(self) -> dict[str, Any]:
        images: list[dict[str, Any]] = self.client.describe_images(ImageIds=[self.ami])["Images"]
        return images[0]

    def snapshots(self, image: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        image = image or self.describe()
        ids = [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if "Ebs" in m and m["Ebs"].get("SnapshotId")
        ]
        return self.client.describe_snapshots(SnapshotIds=ids)["Snapshots"] if ids else []

    def block_public_access(self) -> str | None:
        """The account's image block-public-access state, where the API offers it."""
        try:
            found = self.client.get_image_block_public_access_state()
            state: str = found["ImageBlockPublicAccessState"]
            return state
        except Exception as exc:
            if why(exc).split(":")[0] in NOT_OFFERED or "parse" in str(exc):
                return None
            raise

    def require_imdsv2(self, image: dict[str, Any]) -> None:
        """Instances of the AMI get instance metadata only with a token (IMDSv2). Packer 1.6.6
        cannot ask for it at build time; the setting is one-way, so nothing to revoke."""
        if image.get("ImdsSupport") != "v2.0":
            self.client.modify_image_attribute(ImageId=self.ami, ImdsSupport={"Value": "v2.0"})

    def launch_permissions(self) -> list[Permission]:
        attr = self.client.describe_image_attribute(ImageId=self.ami, Attribute="launchPermission")
        permissions: list[Permission] = attr.get("LaunchPermissions", [])
        return permissions

    def volume_permissions(self, snapshot: str) -> list[Permission]:
        attr = self.client.describe_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission"
        )
        permissions: list[Permission] = attr.get("CreateVolumePermissions", [])
        return permissions

    def check_public(self, snapshots: list[dict[str, Any]]) -> None:
        encrypted = [s["SnapshotId"] for s in snapshots if s.get("Encrypted")]
        if encrypted:
            raise ImageforgeError(
                f"snapshot {', '.join(encrypted)} is encrypted: AWS cannot share encrypted "
                "snapshots publicly; share with named accounts instead, or build with "
                "encrypt_boot: false"
            )
        if self.block_public_access() == "block-new-sharing":
            raise ImageforgeError(
                "image block public access is on for this account and region",
                hint="aws ec2 disable-image-block-public-access, or share with accounts",
            )

    def share(
        self, wanted: list[Permission], public: bool, volumes: bool
    ) -> tuple[list[str], list[Permission]]:
        """(what changed, the snapshot permissions added): launch permission for wanted, and
        with volumes the same on every snapshot. A shared AMI requires IMDSv2 first."""
        image = self.describe()
        self.require_imdsv2(image)
        snapshots = self.snapshots(image)
        if public:
            self.check_public(snapshots)
        changes = []
        missing = [p for p in wanted if p not in self.launch_permissions()]
        if missing:
            self.client.modify_image_attribute(ImageId=self.ami, LaunchPermission={"Add": missing})
            changes.append("launch permission " + ", ".join(describe(p) for p in missing))
        if not volumes:
            return changes, []
        asked = [{"Snapshot": s["SnapshotId"], **p} for s in snapshots for p in wanted]
        added = self.change_volumes(asked, "add")
        return changes + [_volume_change(p, "add") for p in added], added

    def unshare(self, added: list[Permission]) -> list[str]:
        changes = []
        launch = [p for p in added if "Snapshot" not in p]
        present = [p for p in launch if p in self.launch_permissions()]
        if present:
            self.client.modify_image_attribute(
                ImageId=self.ami, LaunchPermission={"Remove": present}
            )
            changes.append("removed launch permission " + ", ".join(describe(p) for p in present))
        removed = self.change_volumes([p for p in added if "Snapshot" in p], "remove")
        return changes + [_volume_change(p, "remove") for p in removed]

    def change_volumes(self, permissions: list[Permission], operation: str) -> list[Permission]:
        """Add (or remove) each snapshot's createVolumePermission where it is missing (or
        present); those changed."""
        changed = []
        for permission in permissions:
            sid = permission["Snapshot"]
            bare = {k: v for k, v in permission.items() if k != "Snapshot"}
            args = snapshot_args(bare)
            if args is None or (bare in self.volume_permissions(sid)) == (operation == "add"):
                continue
            self.client.modify_snapshot_attribute(
                SnapshotId=sid, Attribute="createVolumePermission", OperationType=operation, **args
            )
            changed.append(permission)
        return changed


def _volume_change(permission: Permission, operation: str) -> str:
    done = "" if operation == "add" else "removed "
    return f"{done}createVolumePermission on {permission['Snapshot']} for {describe(permission)}"
