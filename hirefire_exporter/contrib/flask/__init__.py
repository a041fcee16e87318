"""Flask integration: ``hirefire_exporter.contrib.flask.blueprint.build_hirefire_blueprint(token, procs)``."""
