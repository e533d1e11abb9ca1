from moescope.cli import app

app(prog_name="moescope")
