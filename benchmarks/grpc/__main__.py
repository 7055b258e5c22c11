import sys

from benchmarks.grpc.harness import main

sys.exit(main())
