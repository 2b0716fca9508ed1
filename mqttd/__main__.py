import sys

from mqttd.cli import main

sys.exit(main())
