from resedis.cli import main

raise SystemExit(main())
