"""The `publish:` section of images.yml: who each cell's images are shared with.

    publish:
      aws: {public: true}                       # or accounts: [...], organizations: [ARN, ...];
                                                # snapshots: true to let them copy the disks
      gcp: {members: [allAuthenticatedUsers]}   # or user:, group:, serviceAccount:, domain:
      openstack: {visibility: community}        # private | shared | community | public, members

The section stands at the top level and in a flavor; a flavor's entry for a cloud replaces the
top-level one for that cloud. With no entry for a cloud nothing is shared there by bare
`invoke publish`, and `invoke publish --image F --cloud C` refuses unless its command line
names whom to share with (the same rules apply to --account, --public and --visibility); an
entry that names nobody (`aws: {}`) says "do not share" explicitly. Nothing is public unless
`public: true`, an `allUsers`/`allAuthenticatedUsers` member or a public/community
visibility says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

from imageforge.config.configerrors import suggest
from imageforge.config.configtypes import Model
from imageforge.errors import ConfigError

AWS_ACCOUNT = re.compile(r"^[0-9]{12}$")
AWS_ORGANIZATION = re.compile(
    r"^arn:aws[a-z-]*:organizations::[0-9]{12}:"
    r"(organization/o-[a-z0-9]{10,32}|ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32})$"
)
GCP_EVERYONE = ("allUsers", "allAuthenticatedUsers")
GCP_MEMBER_TYPES = ("user", "group", "serviceAccount", "domain")
_EMAIL = re.compile(r"^[^@\s:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_DOMAIN = re.compile(r"^([a-z0-9-]+\.)+[a-z]{2,}$")


def _aws_account(text: str) -> str:
    if not AWS_ACCOUNT.match(text):
        raise ValueError("an AWS account id is 12 digits, e.g. '123456789012'")
    return text


def _aws_organization(text: str) -> str:
    if not AWS_ORGANIZATION.match(text):
        raise ValueError(
            "not an organization or OU ARN such as "
            "'arn:aws:organizations::123456789012:organization/o-exampleorgid' or "
            "'arn:aws:organizations::123456789012:ou/o-exampleorgid/ou-ab12-cdef3456'"
        )
    return text


def _gcp_member(text: str) -> str:
    """An IAM member: allUsers, allAuthenticatedUsers, or type:identity."""
    if text in GCP_EVERYONE or text.startswith(("principal://", "principalSet://")):
        return text
    kind, _, identity = text.partition(":")
    allowed = f"{', '.join(GCP_EVERYONE)}, or " + ", ".join(f"{t}:..." for t in GCP_MEMBER_TYPES)
    if not identity:
        raise ValueError(f"not an IAM member; allowed: {allowed}{suggest(text, GCP_EVERYONE)}")
    if kind not in GCP_MEMBER_TYPES:
        raise ValueError(
            f"unknown IAM member type {kind!r}; allowed: {allowed}{suggest(kind, GCP_MEMBER_TYPES)}"
        )
    pattern = _DOMAIN if kind == "domain" else _EMAIL
    if not pattern.match(identity):
        what = "a domain such as example.com" if kind == "domain" else "an email address"
        raise ValueError(f"{kind}: takes {what}")
    return text


AwsAccount = Annotated[str, AfterValidator(_aws_account)]
AwsOrganization = Annotated[str, AfterValidator(_aws_organization)]
GcpMember = Annotated[str, AfterValidator(_gcp_member)]
# A Keystone project id (32 hex digits on most clouds; some deployments use other ids).
ProjectId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@dataclass(frozen=True)
class Sharing:
    """Who may use a published image: everyone, or named accounts/projects/members; on
    OpenStack, visibility names the Glance visibility to set (public, community, shared); on
    AWS, snapshots also lets them create volumes from the AMI's snapshots. Nobody unless
    named: public is never the default."""

    public: bool = False
    accounts: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    visibility: str | None = None
    snapshots: bool = False

    def describe(self) -> str:
        """Who it is shared with, as the record keeps it: 'public', 'visibility community',
        'visibility shared; shared with p1, p2', 'shared with 123456789012, arn:...'."""
        named = [*self.accounts, *self.organizations]
        parts = [f"visibility {self.visibility}"] if self.visibility else []
        if self.public and not self.visibility:
            parts.append("public")
        if named and not self.public:
            parts.append("shared with " + ", ".join(named))
        return "; ".join(parts) or "private"


class Policies(Protocol):
    """What policy_for reads of images.yml's model: the top level's policy and each flavor's."""

    @property
    def publish(self) -> PublishPolicy | None: ...

    @property
    def flavors(self) -> Mapping[str, Any]: ...


class Signed(Model):
    """require_signed: publish only builds whose signed provenance verifies."""

    require_signed: StrictBool = Field(
        False, description="refuse a build without signed provenance that verifies"
    )


class AwsPublish(Signed):
    """Launch permission on every AMI; volume permission on its snapshots only if asked."""

    public: StrictBool = Field(False, description="every AWS account")
    accounts: tuple[AwsAccount, ...] = Field((), description="12-digit account ids")
    organizations: tuple[AwsOrganization, ...] = Field((), description="organization/OU ARNs")
    snapshots: StrictBool = Field(
        False,
        description="also createVolumePermission on the snapshots (copying the disk); "
        "launching an AMI does not need it",
    )

    @model_validator(mode="after")
    def _public_or_named(self) -> AwsPublish:
        if self.public and (self.accounts or self.organizations):
            raise ValueError(
                "public: true already shares with every account; drop accounts/organizations"
            )
        return self


class GcpPublish(Signed):
    """roles/compute.imageUser on the image for these IAM members."""

    members: tuple[GcpMember, ...] = Field(
        (), description="allAuthenticatedUsers, allUsers, user:, group:, serviceAccount:, domain:"
    )


OPENSTACK_VISIBILITIES = ("private", "shared", "community", "public")


class OpenstackPublish(Signed):
    """The Glance image's visibility, and member projects for a shared image."""

    visibility: Literal["private", "shared", "community", "public"] | None = Field(
        None, description="default: shared when members are named, else private"
    )
    members: tuple[ProjectId, ...] = Field((), description="project ids (visibility shared)")

    @model_validator(mode="after")
    def _members_need_shared(self) -> OpenstackPublish:
        if self.members and self.visibility not in (None, "shared"):
            raise ValueError(
                f"Glance adds members to shared images only, not {self.visibility} ones; "
                "use visibility: shared, or drop members"
            )
        if self.visibility == "shared" and not self.members:
            raise ValueError("visibility shared needs members: the project ids to share with")
        return self


CloudPolicy = AwsPublish | GcpPublish | OpenstackPublish


class PublishPolicy(Signed):
    """Who a cell's images are shared with, per cloud; no entry: not shared."""

    aws: AwsPublish | None = None
    gcp: GcpPublish | None = None
    openstack: OpenstackPublish | None = None


def policy_for(images: Policies, flavor: str, cloud: str) -> CloudPolicy | None:
    """The policy of a cell (the flavor's entry for the cloud, else the top level's), or None
    when images.yml has none for it."""
    own = images.flavors[flavor].publish
    chosen = getattr(own, cloud, None) if own is not None else None
    return chosen if chosen is not None else getattr(images.publish, cloud, None)


def requires_signature(images: Policies, flavor: str, cloud: str) -> bool:
    """Whether any publish policy of the cell (the flavor's or the top level's, for every
    cloud or this one) says require_signed: the command line cannot lift it."""
    policies = [images.flavors[flavor].publish, images.publish]
    found = [p for p in policies if p is not None]
    found += [getattr(p, cloud, None) for p in found]
    return any(p is not None and p.require_signed for p in found)


def sharing(policy: CloudPolicy) -> Sharing | None:
    """What the cloud's sharer is asked for, or None when the policy shares with nobody."""

    if isinstance(policy, AwsPublish):
        if policy.public:
            return Sharing(public=True, snapshots=policy.snapshots)
        if policy.accounts or policy.organizations:
            return Sharing(
                public=False,
                accounts=policy.accounts,
                organizations=policy.organizations,
                snapshots=policy.snapshots,
            )
        return None
    if isinstance(policy, GcpPublish):
        members = tuple(dict.fromkeys(policy.members))
        return Sharing(public=False, accounts=members) if members else None
    visibility = policy.visibility or ("shared" if policy.members else "private")
    if visibility == "private":
        return None
    if visibility == "shared":
        return Sharing(public=False, accounts=policy.members, visibility="shared")
    return Sharing(public=True, visibility=visibility)


def shares(images: Policies, flavor: str, cloud: str) -> bool:
    """Whether images.yml's policy for a cell shares its images with anyone."""
    policy = policy_for(images, flavor, cloud)
    return policy is not None and sharing(policy) is not None


def from_command_line(
    cloud: str,
    accounts: tuple[str, ...] = (),
    organizations: tuple[str, ...] = (),
    public: bool = False,
    visibility: str | None = None,
) -> CloudPolicy | None:
    """The policy that `invoke publish` options ask for, checked by the rules images.yml's
    `publish:` follows; None when they ask for nothing."""
    if not (accounts or organizations or public or visibility):
        return None
    if organizations and cloud != "aws":
        raise ConfigError(f"--organization is for aws only, not {cloud}")
    if visibility and cloud != "openstack":
        raise ConfigError(
            f"--visibility is for openstack only; on {cloud} use --account or --public"
        )
    try:
        if cloud == "aws":
            return AwsPublish(public=public, accounts=accounts, organizations=organizations)
        if cloud == "gcp":
            everyone = ("allAuthenticatedUsers",) if public else ()
            return GcpPublish(members=(*everyone, *accounts))
        if public and visibility not in (None, "public", "community"):
            raise ConfigError(f"--public contradicts --visibility {visibility}")
        return OpenstackPublish(
            visibility=visibility or ("public" if public else None), members=accounts
        )
    except ValidationError as exc:
        raise ConfigError("publish options: " + _first_problem(exc)) from None


def _first_problem(exc: ValidationError) -> str:
    """One line for the first problem pydantic found: the option and what is allowed."""
    error = exc.errors()[0]
    options = {"accounts": "--account", "members": "--account", "organizations": "--organization"}
    where = error["loc"][0] if error["loc"] else ""
    option = options.get(str(where), f"--{where}" if where else "")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "literal_error":
        message = f"allowed: {', '.join(OPENSTACK_VISIBILITIES)}"
    return f"{option}: {message}" if option else message
