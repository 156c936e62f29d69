"""Build hook: put ``lti_reduce_adapters.pth`` into site-packages (see ``_lti_reduce_adapters.py``).

All metadata is in ``pyproject.toml``; this file only adds the ``.pth`` file to a regular
(wheel) install, so that ``import adapters.torch`` works beside AdapterHub's ``adapters``.
Editable installs map ``adapters.torch`` through their own finder and need no ``.pth``.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "lti_reduce_adapters.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(os.path.join(here, PTH), os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
