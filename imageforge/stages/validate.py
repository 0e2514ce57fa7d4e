"""validate: render a cell and let the real `packer validate` and `packer fmt -check` judge it."""

from __future__ import annotations

from pathlib import Path

from imageforge import clouds, packer
from imageforge.config import Project
from imageforge.config.matrix import Cell
from imageforge.errors import CommandError, ImageforgeError
from imageforge.packer import PackerVersion
from imageforge.process import reap, runner
from imageforge.records import buildinfo
from imageforge.stages import render


def validate(project: Project, cell: Cell, version: PackerVersion) -> render.Rendered:
    """Render the cell and validate it with no cloud account: dummy credentials only."""
    cloud = clouds.get(cell.cloud)
    rendered = render.render(project, cell, version, cloud=cloud)
    render.write_vars(
        rendered, buildinfo.packer_vars(project.root, "validate", rendered.template_hash)
    )
    with (
        reap.scratch("imageforge-validate-") as scratch_dir,
        cloud.validation_env(project, scratch_dir) as cloud_env,
    ):
        scratch = str(scratch_dir)
        env = {
            "PKR_VAR_host_files_dir": scratch,
            "CHECKPOINT_DISABLE": "1",
            "PACKER_CACHE_DIR": str(Path(scratch) / "cache"),
            **cloud_env,
        }
        try:
            runner.run(
                [packer.binary(), "validate", str(rendered.directory)],
                env=env,
                cwd=project.root,
                stream=False,
                what=f"packer validate {cell.name}",
            )
            runner.run(
                [packer.binary(), "fmt", "-check", "-diff", str(rendered.directory)],
                cwd=project.root,
                stream=False,
                what=f"packer fmt -check {cell.name}",
            )
        except CommandError as exc:
            raise ImageforgeError(str(exc)) from None
    return rendered
