import sys

from pam_vrf.cli import main

sys.exit(main())
