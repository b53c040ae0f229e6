from imgtrain.cli import entry

entry()
