"""The reference deployment's web side: the app factory the Procfile serves
(`app.main:create_app_from_env`) and the run command (`app.launch`)."""
