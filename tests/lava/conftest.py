import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def pytest_addoption(parser):
    parser.addoption("--jobs", default=os.path.join(ROOT, "build", "lava-jobs"),
                     help="folder of generated LAVA jobs (make lava-jobs)")
