import sys

from lib.provision.cli import main

sys.exit(main(sys.argv[1:]))
