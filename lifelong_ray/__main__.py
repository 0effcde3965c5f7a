import sys

from lifelong_ray.cli import main

sys.exit(main())
