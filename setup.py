"""Build hook only (the project's metadata is in pyproject.toml): put `dlm_sft_lm_eval.pth` at the
top of site-packages, so lm-eval's own CLI knows `--model dlm` (see sft/evaluation/lm_eval_hook.py).
A wheel's top level is site-packages; an editable install gets the file in its editable wheel."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path("sft", "evaluation", "dlm_sft_lm_eval.pth")


class BuildPyWithLmEvalHook(build_py):
    def run(self) -> None:
        super().run()
        # an editable install's wheel is assembled in the install command's directory
        editable_wheel = self.get_finalized_command("install").install_lib if self.editable_mode else None
        target = editable_wheel or self.build_lib
        self.copy_file(str(PTH), str(Path(target, PTH.name)))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, str(Path(self.build_lib, PTH.name))]


setup(cmdclass={"build_py": BuildPyWithLmEvalHook})
