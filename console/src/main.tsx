import { render } from "preact";
import { App } from "./App";
import { finishSignIn, whoAmI } from "./boot";
import "./styles.css";

void (async () => {
  await finishSignIn();
  await whoAmI();
})();

render(<App />, document.getElementById("app")!);
