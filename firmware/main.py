# relaybox entry point: on a board this file is /main.py; on a host `relaybox run` starts it.
import relaybox.app

relaybox.app.main()
