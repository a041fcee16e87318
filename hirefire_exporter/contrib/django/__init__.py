"""Django integration: add ``hirefire_exporter.contrib.django.middleware.HireFireMiddleware`` to ``MIDDLEWARE``."""
