"""images.yml loading: defaults, merging, and the exact located message for each mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imageforge import config
from imageforge.config import matrix
from imageforge.errors import ConfigError

from ..conftest import ROOT, write

MALFORMED = {
    "yaml syntax": (
        "flavors:\n  slurm-node:\n    user: [unclosed\n",
        "images.yml:4:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 3, column 11)",
    ),
    "wrong type": (
        "clouds:\n  local:\n    cpus: two\nflavors:\n  a: {}\n",
        "images.yml:3:5: clouds.local.cpus: input should be a valid integer (got 'two')",
    ),
    "user-data an instance would refuse": (
        "flavors:\n  a:\n    verify_user_data:\n      imageforge_desktop: {attendee: '7; reboot'}\n",
        "images.yml:3:5: flavors.a.verify_user_data: imageforge_desktop.attendee: String should "
        "match pattern '^[A-Za-z0-9][A-Za-z0-9-]{0,15}$' (got a mapping)",
    ),
    "scalar for a list": (
        "flavors:\n  a:\n    ports: 22\n",
        "images.yml:3:5: flavors.a.ports: input should be a list (got 22)",
    ),
    "number for a string": (
        "flavors:\n  a:\n    tags:\n      version: 1.0\n",
        "images.yml:4:7: flavors.a.tags.version: input should be a string; quote it in YAML "
        "(got 1.0)",
    ),
    "unknown flavor": (
        "flavors:\n  slurm-node: {}\nmatrix:\n  flavors: [slurm-nod]\n",
        "images.yml:4:13: matrix.flavors[0]: unknown flavor 'slurm-nod'; allowed: slurm-node; "
        "did you mean 'slurm-node'?",
    ),
    "unknown cloud": (
        "flavors:\n  a: {}\nmatrix:\n  clouds: [local, azure]\n",
        "images.yml:4:19: matrix.clouds[1]: 'azure' is not allowed; "
        "allowed: local, aws, gcp, openstack",
    ),
    "unknown cloud section": (
        "clouds:\n  awz: {}\nflavors:\n  a: {}\n",
        "images.yml:2:3: clouds: unknown key 'awz'; allowed: local, aws, gcp, openstack; "
        "did you mean 'aws'?",
    ),
    "empty matrix": (
        "flavors:\n  a: {}\nmatrix:\n  clouds: []\n",
        "images.yml:3:1: matrix: the matrix is empty: no flavor × cloud cell is left",
    ),
    "duplicate cell": (
        "flavors:\n  a: {}\nmatrix:\n  include:\n    - {flavor: a, cloud: aws}\n",
        "images.yml:5:7: matrix.include[0]: duplicate cell a-aws: it is already in the matrix "
        "(hint: remove this include entry)",
    ),
    "unknown timezone": (
        "flavors:\n  a:\n    desktop:\n      shutdown: {timezone: Europe/Londn}\n",
        "images.yml:4:18: flavors.a.desktop.shutdown.timezone: not a tz database timezone such "
        "as Europe/London; did you mean 'Europe/London'? (got 'Europe/Londn')",
    ),
    "shutdown time": (
        "flavors:\n  a:\n    desktop:\n      shutdown: {time: '6pm'}\n",
        "images.yml:4:18: flavors.a.desktop.shutdown.time: must match "
        "^([01][0-9]|2[0-3]):[0-5][0-9]$ (got '6pm')",
    ),
    "unknown desktop key": (
        "flavors:\n  a:\n    desktop:\n      vnc_password: hunter22\n",
        "images.yml:4:7: flavors.a.desktop: unknown key 'vnc_password'; allowed: "
        "vnc_localhost_only, geometry, shutdown, autosquash, s3fs",
    ),
    "s3fs without a bucket": (
        "flavors:\n  a:\n    desktop:\n      s3fs: {path_style: true}\n",
        "images.yml:4:7: flavors.a.desktop.s3fs: missing required key 'bucket'",
    ),
    "relative autosquash": (
        "flavors:\n  a:\n    desktop:\n      autosquash: data/squash\n",
        "images.yml:4:7: flavors.a.desktop.autosquash: must match ^/[A-Za-z0-9._/-]*$ "
        "(got 'data/squash')",
    ),
    "duplicate cloud": (
        "flavors:\n  a: {}\nmatrix:\n  clouds: [aws, gcp, aws]\n",
        "images.yml:4:22: matrix.clouds[2]: duplicate entry 'aws'",
    ),
    "missing provisioner": (
        "flavors:\n  a:\n    provisioners:\n      - provisioners/slurm-node/20-slurn.sh\n",
        "images.yml:4:9: flavors.a.provisioners[0]: file 'provisioners/slurm-node/20-slurn.sh' "
        "does not exist; did you mean 'provisioners/slurm-node/20-slurm.py'?",
    ),
    "missing test suite": (
        "flavors:\n  a:\n    tests: tests/infra/test_slurm.py\n",
        "images.yml:3:5: flavors.a.tests: file 'tests/infra/test_slurm.py' does not exist; "
        "did you mean 'tests/infra/test_slurm_node.py'?",
    ),
    "typo in a key": (
        "flavors:\n  a:\n    provisoners: []\n",
        "images.yml:3:5: flavors.a: unknown key 'provisoners'; allowed: description, os, user, "
        "packages, provisioners, cleanup, env, tests, ports, tags, desktop, python, aiida, "
        "verify_user_data, publish; "
        "did you mean 'provisioners'?",
    ),
    "typo under defaults": (
        "defaults:\n  tagz: {}\nflavors:\n  a: {}\n",
        "images.yml:2:3: defaults: unknown key 'tagz'; allowed: description, os, user, "
        "packages, provisioners, cleanup, env, tests, ports, tags, desktop, python, aiida, "
        "verify_user_data, publish; "
        "did you mean 'tags'?",
    ),
    "bad package name": (
        "flavors:\n  a:\n    packages: [slurmd, 'curl; rm -rf /']\n",
        "images.yml:3:24: flavors.a.packages[1]: must match ^[a-z0-9][a-z0-9+.-]+$ "
        "(got 'curl; rm -rf /')",
    ),
    "bad package name under defaults": (
        "defaults:\n  packages: [Sudo]\nflavors:\n  a: {}\n",
        "images.yml:2:14: defaults.packages[0]: must match ^[a-z0-9][a-z0-9+.-]+$ (got 'Sudo')",
    ),
    "no flavors": (
        "clouds: {}\n",
        "images.yml:1:1: (top level): missing required key 'flavors'",
    ),
    "empty flavors": (
        "flavors: {}\n",
        "images.yml:1:1: flavors: needs at least one entry (got an empty mapping)",
    ),
    "duplicate key": (
        "flavors:\n  a: {}\n  a: {}\n",
        "images.yml:3:3: duplicate key 'a' (first defined at line 2)",
    ),
    "bad accelerator": (
        "clouds:\n  local:\n    accelerator: kvmm\nflavors:\n  a: {}\n",
        "images.yml:3:5: clouds.local.accelerator: 'kvmm' is not allowed; "
        "allowed: auto, kvm, tcg; did you mean 'kvm'?",
    ),
    "bad placeholder": (
        'clouds:\n  aws:\n    ami_name: "{prefix}-{flavour}"\nflavors:\n  a: {}\n',
        "images.yml:3:5: clouds.aws.ami_name: unknown placeholder {flavour}; "
        "allowed: {prefix}, {flavor}, {build_id}; did you mean 'flavor'?",
    ),
    "bad flavor name": (
        "flavors:\n  Slurm_Node: {}\n",
        "images.yml:2:3: flavors.Slurm_Node: 'Slurm_Node' is not a valid name: "
        "must match ^[a-z][a-z0-9-]{0,40}$",
    ),
    "script outside the project": (
        "flavors:\n  a:\n    provisioners: [../../etc/passwd]\n",
        "images.yml:3:20: flavors.a.provisioners[0].script: must stay inside the project: '..' "
        "is not allowed (got '../../etc/passwd')",
    ),
    "absolute script": (
        "flavors:\n  a:\n    cleanup: [/etc/passwd]\n",
        "images.yml:3:15: flavors.a.cleanup[0].script: must be a path relative to the directory "
        "of images.yml (got '/etc/passwd')",
    ),
    "tests outside the project": (
        "flavors:\n  a:\n    tests: tests/../../x.py\n",
        "images.yml:3:5: flavors.a.tests: must stay inside the project: '..' is not allowed "
        "(got 'tests/../../x.py')",
    ),
    "newline in a description": (
        'flavors:\n  a:\n    description: "one\\ntwo"\n',
        "images.yml:3:5: flavors.a.description: control character U+000A is not allowed "
        "(got 'one\\ntwo')",
    ),
    "line separator in a tag": (
        'flavors:\n  a:\n    tags: {team: "a\\u2028b"}\n',
        "images.yml:3:12: flavors.a.tags.team: control character U+2028 is not allowed "
        "(got 'a\\u2028b')",
    ),
    "escape in a tag key": (
        'flavors:\n  a:\n    tags: {"x\\e[2J": b}\n',
        "images.yml:3:12: flavors.a.tags['x\\x1b[2J']: 'x\\x1b[2J' is not a valid name: control "
        "character U+001B is not allowed",
    ),
    "NUL in an env value": (
        'flavors:\n  a:\n    env: {X: "a\\0b"}\n',
        "images.yml:3:11: flavors.a.env.X: control character U+0000 is not allowed (got 'a\\x00b')",
    ),
    "DEL in a region": (
        'clouds:\n  aws:\n    region: "eu\\x7f"\nflavors:\n  a: {}\n',
        "images.yml:3:5: clouds.aws.region: control character U+007F is not allowed "
        "(got 'eu\\x7f')",
    ),
    "packer template in a tag": (
        "flavors:\n  a:\n    tags: {x: '{{ env `AWS_SECRET_ACCESS_KEY` }}'}\n",
        "images.yml:3:12: flavors.a.tags.x: '{{' is not allowed: Packer would read it as a "
        "template (got '{{ env `AWS_SECRET_ACCESS_KEY` }}')",
    ),
    "packer template in a description": (
        "flavors:\n  a:\n    description: 'built {{timestamp}}'\n",
        "images.yml:3:5: flavors.a.description: '{{' is not allowed: Packer would read it as a "
        "template (got 'built {{timestamp}}')",
    ),
    "env key not a shell name": (
        "flavors:\n  a:\n    env: {'X; rm -rf /': '1'}\n",
        "images.yml:3:11: flavors.a.env.X; rm -rf /: 'X; rm -rf /' is not a valid name: must "
        "match ^[A-Za-z_][A-Za-z0-9_]*$",
    ),
    "provisioner env key starting with a digit": (
        "flavors:\n  a:\n    provisioners:\n      - script: provisioners/common/10-base.sh\n"
        "        env: {1X: '1'}\n",
        "images.yml:5:15: flavors.a.provisioners[0].env.1X: '1X' is not a valid name: must "
        "match ^[A-Za-z_][A-Za-z0-9_]*$",
    ),
    "not a mapping": (
        "- a\n- b\n",
        "images.yml:1:1: the file must be a mapping with a 'flavors' key (got a list)",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_file_gives_exact_located_message(scratch: Path, name: str) -> None:
    text, expected = MALFORMED[name]
    write(scratch, text)
    with pytest.raises(ConfigError) as caught:
        matrix.load("images.yml")
    assert str(caught.value) == expected
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_invoke_reports_one_line_and_exit_code_2(scratch: Path) -> None:
    write(scratch, "flavors:\n  a:\n    ports: [22, http]\n")
    (scratch / "tasks.py").write_text((ROOT / "tasks.py").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "list"], capture_output=True, text=True, cwd=scratch
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: images.yml:3:17: flavors.a.ports[1]: input should be a valid integer (got 'http')"
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_defaults_are_inherited_and_overridden(scratch: Path) -> None:
    write(
        scratch,
        "defaults:\n  user: alice\n  tags: {team: hpc, site: a}\n"
        "flavors:\n  a: {}\n  b:\n    user: bob\n    tags: {site: b}\n",
    )
    images = config.load("images.yml").images
    assert images.flavors["a"].user == "alice"
    assert images.flavors["b"].user == "bob"
    assert images.flavors["b"].tags == {"team": "hpc", "site": "b"}


def test_packages_add_to_the_defaults_packages(scratch: Path) -> None:
    write(
        scratch,
        "defaults:\n  packages: [sudo, curl]\n"
        "flavors:\n  a: {}\n  b:\n    packages: [munge, curl]\n",
    )
    images = config.load("images.yml").images
    assert images.flavors["a"].packages == ("sudo", "curl")
    assert images.flavors["b"].packages == ("sudo", "curl", "munge")


def test_inherited_value_errors_point_at_defaults(scratch: Path) -> None:
    write(scratch, "defaults:\n  ports: [99999]\nflavors:\n  a: {}\n")
    with pytest.raises(
        ConfigError,
        match=r"^images.yml:2:11: defaults.ports\[0\]: input should be less than or equal to 65535",
    ):
        config.load("images.yml")


def test_every_setting_has_a_default(scratch: Path) -> None:
    write(scratch, "flavors:\n  a: {}\n")
    images = config.load("images.yml").images
    assert images.clouds.local.accelerator == "auto"
    assert images.clouds.aws.source_ami["ubuntu-24.04"].owners == ("099720109477",)
    assert images.clouds.aws.source_ami["debian-13"].owners == ("136693071363",)
    assert images.clouds.gcp.source_image["debian-13"].project == "debian-cloud"
    assert images.clouds.openstack.source_image["debian-13"].name == "Debian 13"
    assert images.flavors["a"].os.model_dump() == dict.fromkeys(
        ("local", "aws", "gcp", "openstack"), "debian-13"
    )
    assert images.flavors["a"].cleanup[0].script == "provisioners/cleanup/90-cleanup.sh"


def test_shipped_images_yml_loads() -> None:
    project = config.load(ROOT / "images.yml")
    assert set(project.images.flavors) == {"quantum-mobile", "training-desktop", "slurm-node"}


def test_script_shorthand_and_mapping_forms(scratch: Path) -> None:
    write(
        scratch,
        "flavors:\n  a:\n    provisioners:\n      - provisioners/common/10-base.sh\n"
        "      - script: provisioners/slurm-node/20-slurm.py\n        env: {X: '1'}\n",
    )
    steps = config.load("images.yml").images.flavors["a"].provisioners
    assert [s.script for s in steps] == [
        "provisioners/common/10-base.sh",
        "provisioners/slurm-node/20-slurm.py",
    ]
    assert steps[1].env == {"X": "1"}


def test_symlink_out_of_the_project_is_refused(scratch: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "evil.sh"
    outside.write_text("#!/bin/sh\n")
    (scratch / "provisioners" / "evil.sh").symlink_to(outside)
    write(scratch, "flavors:\n  a:\n    provisioners: [provisioners/evil.sh]\n")
    with pytest.raises(ConfigError) as caught:
        config.load("images.yml")
    assert str(caught.value) == (
        "images.yml:3:20: flavors.a.provisioners[0]: 'provisioners/evil.sh' leads outside the "
        "project directory (a symbolic link?)"
    )


def test_symlink_inside_the_project_is_fine(scratch: Path) -> None:
    (scratch / "provisioners" / "alias.sh").symlink_to(scratch / "provisioners/common/10-base.sh")
    write(scratch, "flavors:\n  a:\n    provisioners: [provisioners/alias.sh]\n")
    assert config.load("images.yml").images.flavors["a"].provisioners[0].script == (
        "provisioners/alias.sh"
    )


def test_quotes_dollars_and_unicode_are_plain_text(scratch: Path) -> None:
    write(
        scratch,
        "flavors:\n  a:\n    description: 'it''s ${x} %{y} \"z\" } ü'\n"
        '    env: {GREETING: "it\'s $HOME `id`"}\n',
    )
    flavor = config.load("images.yml").images.flavors["a"]
    assert flavor.description == 'it\'s ${x} %{y} "z" } ü'
    assert flavor.env == {"GREETING": "it's $HOME `id`"}


def test_symlink_loop_is_a_located_error(scratch: Path) -> None:
    (scratch / "provisioners" / "loop.sh").symlink_to(scratch / "provisioners" / "loop.sh")
    write(scratch, "flavors:\n  a:\n    provisioners: [provisioners/loop.sh]\n")
    with pytest.raises(ConfigError) as caught:
        config.load("images.yml")
    assert str(caught.value) == (
        "images.yml:3:20: flavors.a.provisioners[0]: 'provisioners/loop.sh' is a symbolic link loop"
    )


@pytest.mark.parametrize("key", ["imageforge-build-id", "aws:cloudformation:stack", "goog-x"])
def test_user_tags_may_not_pass_for_ours_or_a_clouds(scratch: Path, key: str) -> None:
    write(scratch, f"flavors:\n  a:\n    tags: {{'{key}': x}}\n")
    with pytest.raises(ConfigError, match=r"images.yml:3:\d+: flavors.a.tags.* are reserved"):
        config.load("images.yml")


@pytest.mark.parametrize(
    "section", ["clouds:\n  gcp:\n    labels", "clouds:\n  openstack:\n    metadata"]
)
def test_cloud_labels_and_metadata_may_not_use_our_keys(scratch: Path, section: str) -> None:
    write(scratch, f"flavors:\n  a: {{}}\n{section}: {{imageforge-build-id: x}}\n")
    with pytest.raises(ConfigError, match=r"images.yml:5:\d+: clouds\..* are reserved"):
        config.load("images.yml")


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("ada.lovelace", "a login name without a dot: sudo ignores /etc/sudoers.d files"),
        ("Ada", "a login name: a lowercase letter or _"),
        ("1ada", "a login name: a lowercase letter or _"),
        ("a" * 33, "32 characters at most"),
    ],
)
def test_user_names_that_would_get_no_sudo_or_no_account_are_refused(
    scratch: Path, user: str, message: str
) -> None:
    write(scratch, f"flavors:\n  a:\n    user: {user}\n")
    with pytest.raises(ConfigError) as refused:
        config.load(scratch / "images.yml")
    assert str(refused.value).startswith("images.yml:3:5: flavors.a.user: ")
    assert message in str(refused.value)
