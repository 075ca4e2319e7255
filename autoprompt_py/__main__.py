import os

# torch's C++ retry and stack-trace logs would bury the one-line error of a failed rendezvous
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")

from autoprompt_py.cli import main  # noqa: E402

main()
