from tunery.cli import app

app(prog_name="tunery")
