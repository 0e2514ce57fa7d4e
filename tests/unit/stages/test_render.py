"""Rendering: parsed HCL equals the model, any user text survives, and versions are honoured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hcl2
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imageforge import clouds, config, packer
from imageforge.config import matrix, userdata
from imageforge.packer import PackerVersion
from imageforge.process import runner
from imageforge.stages import render

from ..conftest import ROOT

OLD = PackerVersion(1, 6, 6)
NEW = PackerVersion(1, 11, 2)
PARSE = hcl2.SerializationOptions(
    strip_string_quotes=True, with_comments=False, explicit_blocks=False
)
BUILDERS = {"local": "qemu", "aws": "amazon-ebs", "gcp": "googlecompute", "openstack": "openstack"}


def parsed(rendered: render.Rendered, name: str) -> dict:
    return hcl2.loads((rendered.directory / name).read_text(), serialization_options=PARSE)


def source_of(rendered: render.Rendered, cloud: str, cell: str) -> dict:
    return parsed(rendered, "source.pkr.hcl")["source"][0][BUILDERS[cloud]][cell]


@pytest.fixture
def shipped() -> config.Project:
    return config.load(ROOT / "images.yml")


@pytest.mark.parametrize("cloud", list(BUILDERS))
def test_parsed_source_matches_model(shipped: config.Project, tmp_path: Path, cloud: str) -> None:
    cell = matrix.find(shipped, "slurm-node", cloud)
    rendered = render.render(shipped, cell, OLD, tmp_path)
    source = source_of(rendered, cloud, cell.name)
    settings_ = cell.cloud_settings
    tags_key = {"local": None, "aws": "tags", "gcp": "image_labels", "openstack": "metadata"}[cloud]
    if cloud == "aws":
        assert source["region"] == settings_.region
        assert source["instance_type"] == settings_.instance_type
        assert "ami_regions" not in source  # copies come once verified (distribute)
        ami = settings_.source_ami[cell.os]
        assert source["source_ami_filter"][0]["filters"]["name"] == ami.name
        assert source["source_ami_filter"][0]["owners"] == list(ami.owners)
        assert source["source_ami_filter"][0]["most_recent"] is True
        assert source["ami_name"] == "imageforge-slurm-node-${var.build_id}"
    elif cloud == "gcp":
        assert source["zone"] == settings_.zone
        assert source["source_image_family"] == settings_.source_image[cell.os].family
        assert source["image_family"] == "imageforge-slurm-node"
    elif cloud == "openstack":
        assert source["flavor"] == settings_.flavor
        assert source["cloud"] == settings_.cloud
        assert source["source_image_name"] == settings_.source_image[cell.os].name
    else:
        assert source["cpus"] == settings_.cpus
        assert source["memory"] == settings_.memory_mb
        assert source["disk_image"] is True
        # An overlay of the layer (or a cached step's disk), with the -F that QEMU 7.2 needs
        # and Packer 1.6.6 leaves out; a monitor of its own, for the step cache's copies.
        assert source["use_backing_file"] is True
        assert source["qemu_img_args"][0]["create"] == ["-F", "qcow2"]
        # QEMU's arguments: concat() of the fixed ones and, when imageforge runs the build,
        # a monitor socket of its own (Packer's QMP, when on, takes its only client).
        qemuargs = source["qemuargs"]
        assert qemuargs.startswith("${concat([") and "qmp_enable" not in source
        assert 'var.qmp_socket == "" ? [] : [["-qmp", "unix:${var.qmp_socket},' in qemuargs
        assert '"user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"' in qemuargs
    if tags_key:
        tags = source[tags_key]
        assert tags["imageforge-flavor"] == "slurm-node"
        assert tags["imageforge-build-id"] == "${var.build_id}"
        assert tags["imageforge-git-commit"] == "${var.git_commit}"
        assert tags["imageforge-template-hash"] == "${var.template_hash}"
        assert "imageforge-version" in tags
        # The build instance's own: with --on-error=keep, the kept instance's expiry for sweep.
        instance_key = {"aws": "run_tags", "gcp": "labels", "openstack": "instance_metadata"}
        instance = source[instance_key[cloud]]
        assert instance.startswith("${merge({") and '"imageforge-flavor" = "slurm-node"' in instance
        assert (
            '{for k, v in {"imageforge-keep-until" = var.keep_until} : k => v if v != ""}'
            in instance
        )
        assert "keep_until" not in json.dumps(
            {k: v for k, v in source.items() if k != instance_key[cloud]}
        )


def test_build_block_runs_steps_in_order(shipped: config.Project, tmp_path: Path) -> None:
    cell = matrix.find(shipped, "slurm-node", "local")
    build = parsed(render.render(shipped, cell, OLD, tmp_path), "build.pkr.hcl")["build"][0]
    scripts = [p["shell"]["script"] for p in build["provisioner"] if "shell" in p]
    builtin = [render.HOST_PASSTHROUGH, render.METADATA_GUARD, render.FIRSTBOOT_LIBRARY]
    flavor = [s.script for s in cell.flavor.provisioners]
    cleanup = [s.script for s in cell.flavor.cleanup]
    assert scripts == [*builtin, *flavor, render.BUILD_ID_STEP, *cleanup]
    library = next(
        p["shell"]
        for p in build["provisioner"]
        if "shell" in p and p["shell"]["script"] == render.FIRSTBOOT_LIBRARY
    )
    [schema] = [
        v for v in library["environment_vars"] if v.startswith("IMAGEFORGE_USER_DATA_SCHEMA=")
    ]
    assert json.loads(schema.split("=", 1)[1]) == userdata.schema()
    env = next(p["shell"] for p in build["provisioner"] if "shell" in p)["environment_vars"]
    assert "IMAGE_USER=slurm-admin" in env
    post = [next(iter(p)) for p in build["post-processor"]]
    assert post == ["manifest"]  # the Vagrant box is derived after verification


@pytest.mark.parametrize("cloud", ["aws", "gcp", "openstack"])
def test_cloud_builds_install_the_declared_packages_first(
    shipped: config.Project, tmp_path: Path, cloud: str
) -> None:
    cell = matrix.find(shipped, "slurm-node", cloud)
    build = parsed(render.render(shipped, cell, OLD, tmp_path), "build.pkr.hcl")["build"][0]
    shells = [p["shell"] for p in build["provisioner"] if "shell" in p]
    assert shells[0]["script"] == render.HOST_PASSTHROUGH
    inline = shells[1]["inline"]
    install = next(line for line in inline if line.startswith("apt-get install"))
    assert install.split()[-len(cell.flavor.packages) :] == list(cell.flavor.packages)
    assert "munge" in cell.flavor.packages and "sudo" in cell.flavor.packages
    datasource = clouds.get(cloud).datasource
    assert any(f"datasource_list: [{datasource}, None]" in line for line in inline)
    assert [s.get("script") for s in shells[2:]] == [
        render.METADATA_GUARD,
        render.FIRSTBOOT_LIBRARY,
        *(s.script for s in cell.flavor.provisioners),
        render.BUILD_ID_STEP,
        *(s.script for s in cell.flavor.cleanup),
    ]


def packages_step(project: config.Project, cell: matrix.Cell, tmp_path: Path) -> list[str]:
    """The inline commands of a cloud build's generated first provisioner."""
    build = parsed(render.render(project, cell, OLD, tmp_path), "build.pkr.hcl")["build"][0]
    return [p["shell"] for p in build["provisioner"] if "shell" in p][1]["inline"]


def test_a_debian_gcp_build_installs_cloud_init_and_pins_gce(
    shipped: config.Project, tmp_path: Path
) -> None:
    cell = matrix.find(shipped, "slurm-node", "gcp")
    assert cell.os == "debian-13"  # Debian's GCE images: google-guest-agent, no cloud-init
    inline = packages_step(shipped, cell, tmp_path)
    install = next(i for i, line in enumerate(inline) if line.startswith("apt-get install"))
    assert inline[install - 1] == "apt-get update -q"
    assert inline[install].split()[5:] == ["cloud-init", "nftables", *cell.flavor.packages]
    pin = next(i for i, line in enumerate(inline) if render.DATASOURCE_CFG in line)
    assert pin > install  # cloud-init's directory exists by then
    assert inline[pin] == (
        "printf 'datasource_list: [GCE, None]\\nnetwork: {config: disabled}\\n' > "
        "/etc/cloud/cloud.cfg.d/99-imageforge-datasource.cfg"
    )


def test_the_pin_is_the_yaml_cloud_init_reads_and_wins_over_the_packages_own(
    shipped: config.Project, tmp_path: Path
) -> None:
    cell = matrix.find(shipped, "slurm-node", "gcp")
    pin = next(line for line in packages_step(shipped, cell, tmp_path) if "printf" in line)
    written = tmp_path / "pin.cfg"
    runner.run(["sh", "-c", pin.replace(render.DATASOURCE_CFG, str(written))], stream=False)
    assert yaml.safe_load(written.read_text()) == {
        "datasource_list": ["GCE", "None"],
        "network": {"config": "disabled"},
    }
    # cloud.cfg.d: the last file in sort order wins; cloud-init's package writes 90_dpkg.cfg
    name = Path(render.DATASOURCE_CFG).name
    assert sorted([name, "90_dpkg.cfg", "05_logging.cfg"])[-1] == name


@pytest.mark.parametrize(
    ("os_", "cloud", "datasource"),
    [
        ("ubuntu-24.04", "gcp", "GCE"),  # Ubuntu's GCE images have cloud-init
        ("debian-13", "aws", "Ec2"),  # Debian's AMIs and OpenStack images have it too
        ("debian-12", "openstack", "OpenStack, ConfigDrive"),
    ],
)
def test_images_that_have_cloud_init_get_only_the_pin(
    scratch: Path, tmp_path: Path, os_: str, cloud: str, datasource: str
) -> None:
    (scratch / "images.yml").write_text(f"flavors:\n  a:\n    os: {{{cloud}: {os_}}}\n")
    project = config.load(scratch / "images.yml")
    cell = matrix.find(project, "a", cloud)
    assert cell.os == os_ and render.cloud_init_packages(cell) == ()
    inline = packages_step(project, cell, tmp_path)
    # a flavor without packages: only what imageforge itself needs in every image
    assert [line for line in inline if line.startswith("apt-get install")] == [
        "apt-get install -y -q --no-install-recommends nftables"
    ]
    assert inline[-1] == f"printf 'datasource_list: [{datasource}, None]\\n' > " + (
        render.DATASOURCE_CFG
    )


def test_a_debian_gcp_flavor_without_packages_still_gets_cloud_init(
    scratch: Path, tmp_path: Path
) -> None:
    (scratch / "images.yml").write_text("flavors:\n  a:\n    os: {gcp: debian-12}\n")
    project = config.load(scratch / "images.yml")
    inline = packages_step(project, matrix.find(project, "a", "gcp"), tmp_path)
    assert "apt-get install -y -q --no-install-recommends cloud-init nftables" in inline


def test_local_builds_install_no_packages_in_the_vm(shipped: config.Project, tmp_path: Path):
    cell = matrix.find(shipped, "slurm-node", "local")
    text = (render.render(shipped, cell, OLD, tmp_path).directory / "build.pkr.hcl").read_text()
    assert "apt-get install" not in text


def test_plugins_block_only_for_packer_17_and_later(
    shipped: config.Project, tmp_path: Path
) -> None:
    cell = matrix.find(shipped, "training-desktop", "aws")
    old = render.render(shipped, cell, OLD, tmp_path / "old")
    new = render.render(shipped, cell, NEW, tmp_path / "new")
    assert not (old.directory / "plugins.pkr.hcl").exists()
    plugins = parsed(new, "plugins.pkr.hcl")["packer"][0]["required_plugins"][0]
    assert set(plugins) == {"amazon", "googlecompute", "openstack", "qemu"}
    assert plugins["amazon"]["source"] == "github.com/hashicorp/amazon"
    assert old.template_hash != new.template_hash


def test_template_hash_is_stable_and_tracks_content(
    shipped: config.Project, tmp_path: Path
) -> None:
    cell = matrix.find(shipped, "slurm-node", "gcp")
    first = render.render(shipped, cell, OLD, tmp_path / "a")
    again = render.render(shipped, cell, OLD, tmp_path / "b")
    assert first.template_hash == again.template_hash
    (tmp_path / "b" / "source.pkr.hcl").write_text("# changed\n")
    assert render.template_hash(list((tmp_path / "b").glob("*.pkr.hcl"))) != first.template_hash


def test_no_credentials_in_rendered_files(
    shipped: config.Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value-123",
        "OS_PASSWORD": "openstack-password-456",
        "PKR_VAR_http_proxy": "http://user:proxy-pass-789@proxy.invalid:3128",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    for cell in matrix.cells(shipped):
        rendered = render.render(shipped, cell, NEW, tmp_path / cell.name)
        render.write_vars(
            rendered,
            {"build_id": "b", "git_commit": "c", "template_hash": "h", "imageforge_version": "v"},
        )
        for path in rendered.directory.iterdir():
            text = path.read_text()
            for value in secrets.values():
                assert value not in text, (path, value)
    variables = parsed(rendered, "variables.pkr.hcl")["variable"]
    by_name = {name: body for item in variables for name, body in item.items()}
    assert by_name["http_proxy"]["sensitive"] is True
    assert by_name["https_proxy"]["sensitive"] is True


# Any text images.yml accepts: no control characters and no Packer template ('{{').
printable = st.text(st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=40)
free_text = printable.filter(lambda t: "{{" not in t) | st.sampled_from(
    ['"', "\\", "${x}", "%{ if }", "$${x}", "%%{x}", "}}", "\\u0024{x}", "ü🙂"]
)
tag_key = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)


def yaml12_dump(data: object) -> str:
    import io

    from ruamel.yaml import YAML

    out, writer = io.StringIO(), YAML(typ="safe", pure=True)
    writer.default_flow_style = False
    writer.dump(data, out)
    return out.getvalue()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(description=free_text, tags=st.dictionaries(tag_key, free_text, max_size=4))
@example(description="0E0", tags={"n": "1_000", "q": "?0"})  # bare in a 1.1 writer
def test_free_text_fields_round_trip(scratch: Path, description: str, tags: dict[str, str]) -> None:
    """Arbitrary text in description and tags parses back to exactly the same value."""
    images = {"flavors": {"a": {"description": description, "tags": tags}}}
    # Written in the YAML 1.2 dialect imageforge reads (PyYAML's 1.1 leaves "0E0" unquoted,
    # which 1.2 reads as a float).
    (scratch / "images.yml").write_text(yaml12_dump(images))
    project = config.load("images.yml")
    assert project.images.flavors["a"].description == description
    cell = matrix.find(project, "a", "aws")
    source = source_of(render.render(project, cell, OLD, scratch / "out"), "aws", cell.name)
    assert source["ami_description"] == (description or "imageforge a")
    for tag, value in tags.items():
        if not tag.startswith("imageforge-"):
            assert source["tags"][tag] == value


def test_rendered_files_are_in_packer_fmt_form(shipped: config.Project, tmp_path: Path) -> None:
    for cell in matrix.cells(shipped):
        rendered = render.render(shipped, cell, OLD, tmp_path / cell.name)
        render.write_vars(rendered, {"build_id": "b", "a_longer_name": "c"})
        runner.run([packer.binary(), "fmt", "-check", str(rendered.directory)], stream=False)
    aws = (tmp_path / "slurm-node-aws" / "source.pkr.hcl").read_text()
    assert '  region                      = "eu-west-1"' in aws.splitlines()
    assert (rendered.directory / render.VARFILE).read_text().splitlines() == [
        'build_id      = "b"',
        'a_longer_name = "c"',
    ]


def test_template_hash_covers_the_formatted_text(shipped: config.Project, tmp_path: Path) -> None:
    cell = matrix.find(shipped, "slurm-node", "aws")
    rendered = render.render(shipped, cell, OLD, tmp_path)
    assert rendered.template_hash == render.template_hash(rendered.files)


def test_templates_cannot_print_unescaped_text(tmp_path: Path) -> None:
    env = render.environment(ROOT)
    with pytest.raises(TypeError, match="unescaped"):
        env.from_string("x = {{ value }}").render(value='a" ${b}')
    assert env.from_string("x = {{ value | hcl }}").render(value='a" ${b}') == (
        'x = "a\\" \\u0024{b}"'
    )
    assert env.from_string("x = {{ value }}").render(value="var.name") == "x = var.name"


def test_comments_carry_no_user_text(scratch: Path) -> None:
    (scratch / "provisioners" / "odd name.sh").write_text("#!/bin/sh\n")
    (scratch / "images.yml").write_text(
        "flavors:\n  a:\n    provisioners: ['provisioners/odd name.sh']\n"
    )
    project = config.load("images.yml")
    for cloud in BUILDERS:
        rendered = render.render(project, matrix.find(project, "a", cloud), OLD, scratch / cloud)
        for path in rendered.files:
            comments = [
                line for line in path.read_text().splitlines() if line.lstrip().startswith("#")
            ]
            assert comments and not any("odd name" in line for line in comments), path
        build = parsed(rendered, "build.pkr.hcl")["build"][0]
        scripts = [p["shell"].get("script") for p in build["provisioner"] if "shell" in p]
        assert "provisioners/odd name.sh" in scripts


def test_environment_values_are_data(scratch: Path) -> None:
    """Quotes, $ and backquotes reach environment_vars as data; Packer single-quotes them."""
    value = "it's $HOME `id` ${x} %{y} \\"
    (scratch / "images.yml").write_text(yaml.safe_dump({"flavors": {"a": {"env": {"V": value}}}}))
    project = config.load("images.yml")
    rendered = render.render(project, matrix.find(project, "a", "aws"), OLD, scratch / "out")
    build = parsed(rendered, "build.pkr.hcl")["build"][0]
    shells = [p["shell"] for p in build["provisioner"] if "shell" in p]
    assert all(f"V={value}" in shell["environment_vars"] for shell in shells)


def test_aws_build_instances_admit_ssh_from_one_place_and_need_imdsv2(
    shipped: config.Project, tmp_path: Path
) -> None:
    cell = matrix.find(shipped, "slurm-node", "aws")
    old = source_of(render.render(shipped, cell, OLD, tmp_path / "old"), "aws", cell.name)
    new = source_of(render.render(shipped, cell, NEW, tmp_path / "new"), "aws", cell.name)
    for source in (old, new):
        assert source["temporary_security_group_source_cidrs"] == "${var.aws_ssh_source_cidrs}"
    # Packer 1.6.6's amazon-ebs has no metadata options; the amazon plugin has
    assert "metadata_options" not in old and "imds_support" not in old
    assert new["imds_support"] == "v2.0"
    assert new["metadata_options"][0] == {
        "http_endpoint": "enabled",
        "http_tokens": "required",
        "http_put_response_hop_limit": 1,
    }


@pytest.mark.parametrize("cloud", list(BUILDERS))
def test_every_image_gets_the_metadata_guard_whatever_its_flavor_lists(
    shipped: config.Project, tmp_path: Path, cloud: str
) -> None:
    cell = matrix.find(shipped, "slurm-node", cloud)
    text = (render.render(shipped, cell, OLD, tmp_path).directory / "build.pkr.hcl").read_text()
    scripts = re.findall(r'script\s*=\s*"([^"]+)"', text)
    assert scripts[:2] == [render.HOST_PASSTHROUGH, render.METADATA_GUARD]
    if cloud != "local":  # local images have nftables in their layer (recipe.DEFAULT_PACKAGES)
        assert "nftables" in " ".join(render.package_commands(cell))


def test_the_metadata_guard_rejects_every_user_but_root() -> None:
    script = (ROOT / render.METADATA_GUARD).read_text()
    rules = [line.split() for line in script.splitlines() if "meta skuid != 0" in line]
    assert {r[2] for r in rules} == {"169.254.169.254", "fd00:ec2::254"}
    assert all("reject" in r for r in rules)
    assert "Before=network-pre.target" in script and "systemd-user-sessions.service" in script
    assert "systemctl enable --no-reload imageforge-metadata-guard.service" in script
